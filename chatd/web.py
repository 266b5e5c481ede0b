"""
Small twisted.web pieces shared by chatd's HTTP sites (the MSGR API and the
metrics listener).
"""

from __future__ import annotations

from twisted.web import resource


class NotFound(resource.Resource):
    """Unknown paths: 404 with a plain body (no HTML page)."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"404"


class Directory(resource.Resource):
    """A resource whose only content is its children; anything else is 404."""

    def getChild(self, path, request):
        return NotFound()
