"""The KenLM perplexity filters of a job: CCNet quality buckets and harmful-content perplexity."""
