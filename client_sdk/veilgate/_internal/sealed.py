"""Sealed boxes: libsodium ``crypto_box_seal`` (X25519 + XSalsa20-Poly1305), via PyNaCl.

A sealed box is anonymous public-key encryption: anyone holding the recipient's X25519 public key can
seal, only the holder of the private key can open, and the ciphertext is
``ephemeral_pk (32) || box(48+ bytes)``. Every libsodium binding (Node's libsodium-wrappers, Java's
lazysodium) opens it unchanged. Sealing gives confidentiality only; authenticity of what is inside
comes from the gateway's JWS signature.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.public

from veilgate.errors import DeliveryInvalid

__all__ = ["open_sealed", "seal"]


def seal(plaintext: bytes, *, recipient_public_key: bytes) -> bytes:
    return nacl.public.SealedBox(nacl.public.PublicKey(recipient_public_key)).encrypt(plaintext)


def open_sealed(ciphertext: bytes, *, private_key: nacl.public.PrivateKey) -> bytes:
    try:
        return nacl.public.SealedBox(private_key).decrypt(ciphertext)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, nacl.exceptions.TypeError) as e:
        raise DeliveryInvalid("the sealed delivery does not open with this wallet's key") from e
