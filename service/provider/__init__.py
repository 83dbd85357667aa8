"""The telephony provider: the thundersms client and its simulator."""
