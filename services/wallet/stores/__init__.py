"""The app stores coins are bought in: each store's verifier of its purchases (ports.StoreVerifier), its settings,
and the endpoint for the notifications it sends to the wallet's HTTP port."""
