"""Loopback stand-ins for the payment and payout providers (each speaking its provider's documented JSON) and the keys,
certificates and signatures the tests make for them: the providers' own libraries verify them unmodified."""
