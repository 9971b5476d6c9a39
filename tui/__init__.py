"""The stepline console: a full-screen Textual app over the engine's query and command tables."""
