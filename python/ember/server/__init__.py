"""The OpenAI-compatible HTTP server behind `ember serve` (`ember.server.app.build_app` builds the application)."""
