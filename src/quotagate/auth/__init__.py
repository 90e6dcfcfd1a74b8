"""Authentication: gateway key -> principal (key id, user, tier, allowed models)."""

from ._authenticator import Authenticator, extract_key
from ._principal import Principal

__all__ = ["Authenticator", "Principal", "extract_key"]
