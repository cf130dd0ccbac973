"""The transfer service: names, tokens, TLS, the server, the download client, budgets."""
