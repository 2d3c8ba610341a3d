"""The proxy: mitmproxy addons and everything that touches mitmproxy. Thin glue around the core."""
