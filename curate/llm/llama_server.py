"""`python -m curate.llm.llama_server ARGS`: llama-cpp-python's OpenAI-compatible server, taking
`typical_p` in chat requests.

The server's chat request model lacks `typical_p` and silently drops it, although the
`Llama.create_chat_completion` it calls implements locally typical sampling. This adds the field
before the server's app is built, then runs the server's own command line unchanged.
"""

import llama_cpp.server.types as types
from pydantic import Field


class ChatRequest(types.CreateChatCompletionRequest):
    typical_p: float = Field(1.0, gt=0, le=1, description="locally typical sampling mass (Meister et al. 2023)")


types.CreateChatCompletionRequest = ChatRequest

if __name__ == "__main__":
    from llama_cpp.server.__main__ import main

    main()
