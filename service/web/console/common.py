"""What every console page shares: the navigation, the form body and the page context and rendering."""

from __future__ import annotations

from typing import Any

from litestar.enums import RequestEncodingType
from litestar.params import Body

from service.api.deps import MaskingRequest
from service.web.pages import page

# The console's sections, in the order of its navigation bar: (path, label). A new section is one entry.
NAV = [
    ("/console/pools", "Pools"),
    ("/console/dids", "DIDs"),
    ("/console/sessions", "Sessions"),
    ("/console/calls", "Calls needing attention"),
    ("/console/reports", "Unmatched reports"),
    ("/console/webhooks", "Webhooks"),
    ("/console/audit", "Audit"),
]
Form = Body(media_type=RequestEncodingType.URL_ENCODED)


def ctx(request: MaskingRequest, **context: Any) -> dict[str, Any]:
    """A console page's context: the navigation, the page it is on, the tenant, then the page's own values."""
    return {"nav": NAV, "here": request.url.path, "tenant": request.principal.tenant, **context}


def view(request: MaskingRequest, name: str, status_code: int = 200, **context: Any) -> Any:
    """A console page rendered (with status 200 unless told)."""
    return page(name, status_code, **ctx(request, **context))
