"""Gifts service: the gift catalog, live streams, and gifts paid with coins through the wallet."""
