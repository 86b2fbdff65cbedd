"""S3 — Vercel-style edge function: greet visitors by where they are.

``request.geo`` is filled by the node from a trusted proxy's geo headers (or, in
``edgerun dev``, from ``--country`` / ``x-edgerun-country``), else from the offline IP
database; unknown locations get the default greeting.
"""

from edgerun import Request, Response

GREETINGS = {"KR": "안녕하세요", "JP": "こんにちは", "FR": "Bonjour", "DE": "Hallo", "ES": "Hola"}
CURRENCIES = {"KR": "KRW", "JP": "JPY", "FR": "EUR", "DE": "EUR", "ES": "EUR", "US": "USD"}


async def fetch(request: Request) -> Response:
    """Pick greeting and currency from the country; mention the city when known."""
    geo = request.geo
    country = geo.country
    greeting = GREETINGS.get(country or "", "Hello")
    where = ", ".join(part for part in (geo.city, geo.region, country) if part) or "somewhere"
    return Response.json(
        {
            "greeting": f"{greeting}, visitor from {where}!",
            "country": country,
            "region": geo.region,
            "city": geo.city,
            "currency": CURRENCIES.get(country or "", "USD"),
            "ip": request.ip,
        },
        headers={"vary": "x-edgerun-country, cf-ipcountry"},
    )
