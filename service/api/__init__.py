"""HTTP only: decode the request, call the domain, encode the answer."""
