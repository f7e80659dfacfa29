"""What the tests share besides fixtures: the three providers behind the
gateway (each by a model only it serves, with the text the mock answers), the
dummy key clients send and the longest a request may take."""

from __future__ import annotations

from dataclasses import dataclass

# No client key is checked yet; the SDKs insist on having one.
CLIENT_KEY = "sk-client-dummy"
# Longest any single request of a test may take, in seconds.
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Provider:
    name: str
    model: str
    # A model of this provider that accepts image parts.
    vision_model: str

    def greeting(self, model: str | None = None) -> str:
        """The mock's whole answer to a plain request."""
        return f"Hello from {self.name} ({model or self.model})."

    def streamed_text(self, chunks: int = 3) -> str:
        """What `chunks` streamed content deltas add up to."""
        words = [f"{w} " for w in self.greeting().split(" ")]
        return "".join(words[i % len(words)] for i in range(chunks))


PROVIDERS = [
    Provider("moonshot", "kimi-k2-turbo-preview", "moonshot-v1-8k-vision-preview"),
    Provider("aimlapi", "moonshot/kimi-k2-preview", "moonshot/kimi-k2-preview"),
    Provider("agentsflare", "kimi-chat", "kimi-chat"),
]
