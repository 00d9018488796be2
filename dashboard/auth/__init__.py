"""Who may see and do what: viewers (signed tokens, an auth proxy), api tokens, the page's proof for
prompts, trusted proxies, and what a bind address opens to the network. No HTTP server code: the
web layer asks these modules about a request (`Access`), and answers."""

from dashboard.auth.access import Access
from dashboard.auth.viewers import Viewer

__all__ = ["Access", "Viewer"]
