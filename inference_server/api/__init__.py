"""REST API (aiohttp), ``/api/v1``."""
