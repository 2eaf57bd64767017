//! OpenAI chat ⇄ Google Gemini (to be written).
