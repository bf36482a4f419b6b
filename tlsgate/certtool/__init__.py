"""`tlsgate cert`: self-signed certificates, a private CA, and a look inside certificate files.

Built with `cryptography` only. `build` makes keys and certificates in memory, `output` writes
them (keys 0600 from creation on, atomically), `show` describes them, and `commands` ties the
three together into the four commands the CLI offers. The output of every writing command
drops straight into a `[[certificate]]` entry: `cert.pem` (leaf, then chain) and `key.pem`.
"""

from tlsgate.certtool.build import DEFAULT_CA_DAYS, DEFAULT_CA_NAME, DEFAULT_LEAF_DAYS, KeyType
from tlsgate.certtool.commands import ca_init, ca_issue, self_signed, show
from tlsgate.certtool.errors import CertToolError

__all__ = [
    "DEFAULT_CA_DAYS",
    "DEFAULT_CA_NAME",
    "DEFAULT_LEAF_DAYS",
    "CertToolError",
    "KeyType",
    "ca_init",
    "ca_issue",
    "self_signed",
    "show",
]
