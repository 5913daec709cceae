"""The app server: one small asyncio HTTP process per running application, OpenAI-compatible.

It is not the Flask app. `python -m llmapp.runtime --spec FILE` runs it; the deploy job writes FILE.
"""
