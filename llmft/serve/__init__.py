"""`llmft serve`: an OpenAI-compatible HTTP server for anything `llmft chat` loads (a run directory,
an adapter, a model directory, a hub id, a GGUF file), answering with the chat template the model
was trained with and stopping at its end-of-turn token. FastAPI and uvicorn are an optional extra
(`pip install 'llmft[serve]'`)."""
