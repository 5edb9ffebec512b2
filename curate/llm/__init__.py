"""LLM stages: WRAP rephrasing, DataMan rating and selection, on ray.data.llm processors
(vLLM on GPUs, any OpenAI-compatible server, or a local llama.cpp server on CPU)."""
