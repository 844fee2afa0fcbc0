// The gateway's wire contracts, checked in Node.js from their documentation alone: compact JWS
// (EdDSA), C2SP signed notes and checkpoints, RFC 9162 proofs, libsodium sealed boxes and the
// audit entry's hashes. Ed25519, SHA-256 and HMAC come from Node's own crypto (OpenSSL), so nothing
// here shares code with the Python gateway; only the sealed box needs libsodium.
//
// Every check throws `Rejected` with a message saying what failed; nothing returns a bare false.

import { createHash, createHmac, createPrivateKey, createPublicKey, sign, verify } from "node:crypto";
import { createRequire } from "node:module";

// libsodium-wrappers' ES module build names a file its package lacks (0.7.16); its CommonJS build works.
const sodium = createRequire(import.meta.url)("libsodium-wrappers");

export class Rejected extends Error {}

const b64url = (bytes) => Buffer.from(bytes).toString("base64url");
const sha256 = (...parts) => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest();
};
export const sha256b64url = (bytes) => b64url(sha256(bytes));

// --- keys and JWS ----------------------------------------------------------------------------

export function ed25519PublicKey(raw) {
  if (raw.length !== 32) throw new Rejected("an Ed25519 public key is 32 bytes");
  return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: b64url(raw) }, format: "jwk" });
}

export function ed25519PrivateKey(seed, publicKey) {
  return createPrivateKey({ key: { kty: "OKP", crv: "Ed25519", d: b64url(seed), x: b64url(publicKey) }, format: "jwk" });
}

// RFC 8785 for the values the contracts use (strings, integers, arrays, objects): sorted keys,
// no whitespace, and ECMAScript's own string and number serialization, which RFC 8785 adopts.
export function canonicalJson(value) {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

// A compact JWS, alg EdDSA, header {alg, typ, kid}. Plain JSON.stringify: the gateway must accept
// any valid JSON, not only its own canonical form.
export function signJws(claims, { privateKey, typ, kid }) {
  const header = b64url(Buffer.from(JSON.stringify({ alg: "EdDSA", typ, kid })));
  const payload = b64url(Buffer.from(JSON.stringify(claims)));
  const signature = sign(null, Buffer.from(`${header}.${payload}`, "ascii"), privateKey);
  return `${header}.${payload}.${b64url(signature)}`;
}

// The claims of a JWS of kind `typ`, signed by one of `keys` ({keyId: KeyObject}), chosen by kid.
export function verifyJws(token, { typ, keys }) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Rejected("a compact JWS has three parts");
  const header = JSON.parse(Buffer.from(parts[0], "base64url").toString("utf8"));
  if (header.alg !== "EdDSA") throw new Rejected(`alg is ${header.alg}, not EdDSA`);
  if (header.typ !== typ) throw new Rejected(`typ is ${header.typ}, not ${typ}`);
  const key = keys[header.kid];
  if (key === undefined) throw new Rejected(`kid ${header.kid} is not a pinned gateway key`);
  const signature = Buffer.from(parts[2], "base64url");
  if (!verify(null, Buffer.from(`${parts[0]}.${parts[1]}`, "ascii"), key, signature)) {
    throw new Rejected("the JWS signature does not verify");
  }
  return JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
}

// --- sealed boxes -----------------------------------------------------------------------------

export async function openSealed(sealed, secretKey) {
  await sodium.ready;
  const publicKey = sodium.crypto_scalarmult_base(secretKey);
  try {
    return Buffer.from(sodium.crypto_box_seal_open(sealed, publicKey, secretKey));
  } catch {
    throw new Rejected("the sealed box does not open with this key");
  }
}

// --- C2SP signed notes and checkpoints --------------------------------------------------------

// A Go sumdb/note verifier key: name+hash+base64(0x01 || Ed25519 public key).
export function parseVerifierKey(vkey) {
  const [name, hashHex, ...rest] = vkey.split("+"); // a name holds no "+"; base64 may
  const keyB64 = rest.join("+");
  const body = Buffer.from(keyB64, "base64");
  if (body.length !== 33 || body[0] !== 0x01) throw new Rejected("not an Ed25519 verifier key");
  const raw = body.subarray(1);
  const keyHash = sha256(Buffer.from(`${name}\n`, "utf8"), Buffer.from([0x01]), raw).subarray(0, 4);
  if (keyHash.toString("hex") !== hashHex) throw new Rejected("the verifier key's hash does not match its key");
  return { name, keyHash, key: ed25519PublicKey(raw) };
}

// The text of a signed note whose signature by `verifier` verifies.
export function openNote(note, verifier) {
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new Rejected("a signed note has a blank line before its signatures");
  const text = note.slice(0, split + 1);
  const prefix = `\u2014 ${verifier.name} `;
  for (const line of note.slice(split + 2).split("\n")) {
    if (!line.startsWith(prefix)) continue;
    const sig = Buffer.from(line.slice(prefix.length), "base64");
    if (sig.length !== 68 || !sig.subarray(0, 4).equals(verifier.keyHash)) continue;
    if (!verify(null, Buffer.from(text, "utf8"), verifier.key, sig.subarray(4))) {
      throw new Rejected("the note's signature by the trusted key does not verify");
    }
    return text;
  }
  throw new Rejected("the note has no signature by the trusted key");
}

// A C2SP tlog-checkpoint: origin, tree size, base64 root hash, then optional extension lines.
export function openCheckpoint(note, verifier) {
  const [origin, size, root] = openNote(note, verifier).split("\n");
  if (origin !== verifier.name) throw new Rejected("the checkpoint's origin is not the log's key name");
  if (!/^(0|[1-9][0-9]*)$/.test(size)) throw new Rejected("the tree size is not a decimal number");
  const rootHash = Buffer.from(root, "base64");
  if (rootHash.length !== 32) throw new Rejected("the root hash is not 32 bytes");
  return { origin, treeSize: BigInt(size), root: rootHash };
}

// --- RFC 9162 Merkle proofs -------------------------------------------------------------------

export const leafHash = (entry) => sha256(Buffer.from([0x00]), entry);
const nodeHash = (left, right) => sha256(Buffer.from([0x01]), left, right);

// RFC 9162 §2.1.3.2.
export function verifyInclusion({ leaf, index, treeSize, proof, root }) {
  if (index >= treeSize) throw new Rejected("the index is not inside the tree");
  let fn = index;
  let sn = treeSize - 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) throw new Rejected("the inclusion proof is too long");
    if (fn & 1n || fn === sn) {
      r = nodeHash(p, r);
      while (!(fn & 1n) && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Rejected("the inclusion proof is too short");
  if (!r.equals(root)) throw new Rejected("the inclusion proof does not lead to the root");
}

// RFC 9162 §2.1.4.2.
export function verifyConsistency({ firstSize, secondSize, firstRoot, secondRoot, proof }) {
  if (firstSize > secondSize) throw new Rejected("the first tree is larger than the second");
  if (firstSize === secondSize) {
    if (proof.length !== 0 || !firstRoot.equals(secondRoot)) throw new Rejected("equal trees, different roots");
    return;
  }
  if (firstSize === 0n) {
    if (proof.length !== 0) throw new Rejected("a proof from the empty tree is empty");
    return;
  }
  const path = (firstSize & (firstSize - 1n)) === 0n ? [firstRoot, ...proof] : [...proof];
  if (path.length === 0) throw new Rejected("the consistency proof is empty");
  let fn = firstSize - 1n;
  let sn = secondSize - 1n;
  while (fn & 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) throw new Rejected("the consistency proof is too long");
    if (fn & 1n || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (!(fn & 1n) && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n || !fr.equals(firstRoot) || !sr.equals(secondRoot)) {
    throw new Rejected("the consistency proof does not join the two roots");
  }
}

// --- audit entries ----------------------------------------------------------------------------

// Whether an entry's pseudonymous subject is the citizen whose log key this is.
export function isMine(entry, logKey) {
  if (entry.subject === undefined) return false;
  const tag = createHmac("sha256", logKey).update(Buffer.from(entry.subject.nonce, "base64url")).digest();
  return b64url(tag) === entry.subject.tag;
}
