"""Loopback stand-ins for the payment and payout providers (each speaking its provider's documented JSON) and the keys,
certificates and signatures the tests make for them: the providers' own libraries verify them unmodified."""

from __future__ import annotations

from aiohttp import web


class Loopback:
    """Serves a fake provider's aiohttp app on 127.0.0.1 at a free port (each fake owns one)."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None

    async def serve(self, app: web.Application) -> str:
        """The app's base URL, once it listens."""
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
