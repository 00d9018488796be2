"""The Starlette application: routes, streams, pages and JSON APIs."""
