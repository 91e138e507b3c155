"""Small building blocks every layer may use: durable files and periodic loops."""
