// An auditor's check of a Veilgate log export in Java, from the documented formats alone and the
// JDK alone (java.security's Ed25519 and SHA-256; no library): `java VerifyExport.java DIR...`
// (Java 15 or newer, for Ed25519).
//
// DIR holds what `veilgate audit export` writes:
//   entries.jsonl  {"index": i, "leaf": base64(the exact entry bytes hashed into leaf i)} per line
//   checkpoint     a C2SP signed note holding a C2SP tlog-checkpoint (origin, size, base64 root)
//   log.vkey       the log's verifier key, Go sumdb/note format: name+hash+base64(0x01 || key)
// It recomputes the RFC 9162 tree over every entry and checks that the checkpoint, signed by the
// key, commits to that root at that size. For each DIR given it prints one line, naming the first
// thing that does not hold, if any; it exits 0 when everything holds in every DIR, 1 otherwise.

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.MessageDigest;
import java.security.PublicKey;
import java.security.Signature;
import java.security.spec.X509EncodedKeySpec;
import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.Base64;
import java.util.Deque;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public final class VerifyExport {
    private static final Pattern LINE = Pattern.compile("\\{\"index\": (0|[1-9][0-9]*), \"leaf\": \"([A-Za-z0-9+/=]*)\"\\}");
    // DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 raw key bytes.
    private static final byte[] ED25519_SPKI = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};

    static final class Rejected extends Exception {
        Rejected(String message) {
            super(message);
        }
    }

    private static byte[] sha256(byte[]... parts) throws Exception {
        MessageDigest digest = MessageDigest.getInstance("SHA-256");
        for (byte[] part : parts) {
            digest.update(part);
        }
        return digest.digest();
    }

    private static byte[] leafHash(byte[] entry) throws Exception {
        return sha256(new byte[] {0x00}, entry);
    }

    private static byte[] nodeHash(byte[] left, byte[] right) throws Exception {
        return sha256(new byte[] {0x01}, left, right);
    }

    /** RFC 9162 §2.1.1: the root of the leaves appended so far, kept as its perfect subtrees. */
    static final class Tree {
        private final Deque<byte[]> hashes = new ArrayDeque<>();
        private final Deque<Long> sizes = new ArrayDeque<>();
        private long size;

        void append(byte[] leaf) throws Exception {
            byte[] hash = leaf;
            long width = 1;
            while (!sizes.isEmpty() && sizes.peekLast() == width) {
                hash = nodeHash(hashes.pollLast(), hash);
                width += sizes.pollLast();
            }
            hashes.addLast(hash);
            sizes.addLast(width);
            size++;
        }

        byte[] root() throws Exception {
            if (hashes.isEmpty()) {
                return sha256();
            }
            byte[][] subtrees = hashes.toArray(new byte[0][]);
            byte[] root = subtrees[subtrees.length - 1];
            for (int i = subtrees.length - 2; i >= 0; i--) {
                root = nodeHash(subtrees[i], root);
            }
            return root;
        }
    }

    /** The log's key from its verifier key string, its key hash checked. */
    static final class Verifier {
        final String name;
        final byte[] keyHash;
        final PublicKey key;

        Verifier(String vkey) throws Exception {
            String[] parts = vkey.strip().split("\\+", 3);
            if (parts.length != 3) {
                throw new Rejected("the verifier key is not name+hash+key");
            }
            byte[] body = Base64.getDecoder().decode(parts[2]);
            if (body.length != 33 || body[0] != 0x01) {
                throw new Rejected("the verifier key is not an Ed25519 key");
            }
            byte[] raw = Arrays.copyOfRange(body, 1, 33);
            byte[] hash = Arrays.copyOf(sha256((parts[0] + "\n").getBytes(StandardCharsets.UTF_8), new byte[] {0x01}, raw), 4);
            if (!String.format("%02x%02x%02x%02x", hash[0], hash[1], hash[2], hash[3]).equals(parts[1])) {
                throw new Rejected("the verifier key's hash does not match its key");
            }
            byte[] spki = Arrays.copyOf(ED25519_SPKI, ED25519_SPKI.length + 32);
            System.arraycopy(raw, 0, spki, ED25519_SPKI.length, 32);
            this.name = parts[0];
            this.keyHash = hash;
            this.key = KeyFactory.getInstance("Ed25519").generatePublic(new X509EncodedKeySpec(spki));
        }

        /** The note's text, when a signature line by this key verifies over it. */
        String open(String note) throws Exception {
            int split = note.lastIndexOf("\n\n");
            if (split < 0) {
                throw new Rejected("the checkpoint has no blank line before its signatures");
            }
            String text = note.substring(0, split + 1);
            String prefix = "\u2014 " + name + " ";
            for (String line : note.substring(split + 2).split("\n")) {
                if (!line.startsWith(prefix)) {
                    continue;
                }
                byte[] signature = Base64.getDecoder().decode(line.substring(prefix.length()));
                if (signature.length != 68 || !Arrays.equals(Arrays.copyOf(signature, 4), keyHash)) {
                    continue;
                }
                Signature ed25519 = Signature.getInstance("Ed25519");
                ed25519.initVerify(key);
                ed25519.update(text.getBytes(StandardCharsets.UTF_8));
                if (!ed25519.verify(Arrays.copyOfRange(signature, 4, 68))) {
                    throw new Rejected("the checkpoint's signature does not verify");
                }
                return text;
            }
            throw new Rejected("the checkpoint carries no signature by the log's key");
        }
    }

    static String verify(Path dir) throws Exception {
        Verifier verifier = new Verifier(Files.readString(dir.resolve("log.vkey"), StandardCharsets.US_ASCII));
        String[] body = verifier.open(Files.readString(dir.resolve("checkpoint"), StandardCharsets.UTF_8)).split("\n");
        if (body.length < 3 || !body[0].equals(verifier.name)) {
            throw new Rejected("the checkpoint's origin is not the log's key name");
        }
        long treeSize = Long.parseLong(body[1]);
        byte[] signedRoot = Base64.getDecoder().decode(body[2]);
        Tree tree = new Tree();
        List<String> lines = Files.readAllLines(dir.resolve("entries.jsonl"), StandardCharsets.US_ASCII);
        for (String line : lines) {
            Matcher m = LINE.matcher(line);
            if (!m.matches()) {
                throw new Rejected("line " + (tree.size + 1) + " of entries.jsonl is malformed");
            }
            if (Long.parseLong(m.group(1)) != tree.size) {
                throw new Rejected("line " + (tree.size + 1) + " holds entry " + m.group(1) + ", not " + tree.size);
            }
            tree.append(leafHash(Base64.getDecoder().decode(m.group(2))));
        }
        if (tree.size != treeSize) {
            throw new Rejected("the export holds " + tree.size + " entries; the checkpoint covers " + treeSize);
        }
        byte[] root = tree.root();
        if (!Arrays.equals(root, signedRoot)) {
            throw new Rejected("the entries' root is not the signed root");
        }
        return "verified " + treeSize + " entries under " + verifier.name + ", root " + Base64.getEncoder().encodeToString(root);
    }

    public static void main(String[] args) {
        if (args.length == 0) {
            System.err.println("usage: java VerifyExport.java EXPORT_DIR...");
            System.exit(2);
        }
        boolean allHold = true;
        for (String dir : args) {
            String outcome;
            try {
                outcome = verify(Path.of(dir));
            } catch (Rejected e) {
                outcome = "REJECTED: " + e.getMessage();
            } catch (Exception e) {
                outcome = "REJECTED: " + e;
            }
            allHold &= !outcome.startsWith("REJECTED");
            System.out.println(dir + ": " + outcome);
        }
        System.exit(allHold ? 0 : 1);
    }
}
