"""Input pipeline: pure numpy building blocks for audio, voice activity and training windows."""
