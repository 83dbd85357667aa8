"""The domain: tenants, DIDs, sessions and their allocation, calls and reports; never imports litestar."""
