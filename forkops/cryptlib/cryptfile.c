/*
 * libcryptfile: the model decryption library the TensorFlow fork dlopen()s
 * (/opt/lib/libcryptfile.so), built by forkops with the key compiled in.
 *
 * ABI (the fork's, plain C so it is also extern "C" from C++):
 *
 *   CRYPTFILE_EXPORT unsigned long CBCMode_Decrypt(const char *cipher, char **plain, unsigned long size);
 *   unsigned long CBCMode_Encrypt(const char *plain, char **cipher, unsigned long size);
 *
 * Each returns the length of its output and sets *out to a malloc'd buffer holding it (plus one
 * NUL byte, so a caller treating it as a string stops inside the buffer). The fork's caller never
 * frees it. A result of 0 means failure: NULL arguments, ciphertext whose size is 0 or not a
 * multiple of 16, bad PKCS#7 padding (a wrong key), out of memory; *out is then NULL. A file that
 * encrypts an empty plaintext also decrypts to length 0: the ABI cannot tell the two apart.
 *
 * Format (forkops SPEC section 2): AES-CBC with PKCS#7 padding, whole file, no header; AES-128,
 * -192 or -256 chosen by the key length. Byte-compatible with `openssl enc -aes-N-cbc` and with
 * Crypto++'s CBC_Mode<AES> + StreamTransformationFilter.
 *
 * The key and IV are not in this file: `forkops cryptlib build` writes them into a private header
 * and compiles with `-include HEADER`, so they never appear in a source tree or on a command line.
 */
#if !defined(CRYPTFILE_KEY) || !defined(CRYPTFILE_KEY_LEN) || !defined(CRYPTFILE_IV)
#error "cryptfile.c needs the key header: compile with -include HEADER defining CRYPTFILE_KEY, CRYPTFILE_KEY_LEN and CRYPTFILE_IV (forkops cryptlib build writes it)"
#else /* the rest only with the header, so the #error above is the one message */

/* OpenSSL first: without libssl-dev the first error names it (forkops turns it into the apt fix). */
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <limits.h>
#include <stdlib.h>

#define CRYPTFILE_BLOCK 16
/* EVP_CipherUpdate takes an int length: feed large inputs in pieces of this many bytes. */
#define CRYPTFILE_PIECE (1UL << 30)
/* Built with -fvisibility=hidden: only the two ABI functions are exported. */
#define CRYPTFILE_EXPORT __attribute__((visibility("default")))

static const unsigned char kKey[] = CRYPTFILE_KEY;
static const unsigned char kIv[] = CRYPTFILE_IV;

_Static_assert(sizeof(kKey) == CRYPTFILE_KEY_LEN, "CRYPTFILE_KEY does not hold CRYPTFILE_KEY_LEN bytes");
_Static_assert(CRYPTFILE_KEY_LEN == 16 || CRYPTFILE_KEY_LEN == 24 || CRYPTFILE_KEY_LEN == 32,
               "CRYPTFILE_KEY_LEN must be 16, 24 or 32 (AES-128/192/256)");
_Static_assert(sizeof(kIv) == CRYPTFILE_BLOCK, "CRYPTFILE_IV must hold 16 bytes");

static const EVP_CIPHER *cryptfile_cipher(void) {
#if CRYPTFILE_KEY_LEN == 16
  return EVP_aes_128_cbc();
#elif CRYPTFILE_KEY_LEN == 24
  return EVP_aes_192_cbc();
#else
  return EVP_aes_256_cbc();
#endif
}

/* Run AES-CBC over in[0..size) into a new buffer; returns the output length, 0 on failure. */
static unsigned long cryptfile_run(int encrypt, const char *in, char **out, unsigned long size) {
  if (out == NULL) return 0;
  *out = NULL;
  if (in == NULL) return 0;
  if (!encrypt && (size == 0 || size % CRYPTFILE_BLOCK != 0)) return 0;
  /* Encryption adds 1..16 bytes of padding; decryption only removes bytes. */
  unsigned long room = encrypt ? size + CRYPTFILE_BLOCK - size % CRYPTFILE_BLOCK : size;
  if (room < size || room == ULONG_MAX) return 0; /* overflow */

  unsigned char *buf = malloc(room + 1);
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  unsigned long done = 0;
  int ok = buf != NULL && ctx != NULL &&
           EVP_CipherInit_ex(ctx, cryptfile_cipher(), NULL, kKey, kIv, encrypt) == 1;
  const unsigned char *src = (const unsigned char *)in;
  for (unsigned long at = 0; ok && at < size;) {
    unsigned long piece = size - at < CRYPTFILE_PIECE ? size - at : CRYPTFILE_PIECE;
    int n = 0;
    ok = EVP_CipherUpdate(ctx, buf + done, &n, src + at, (int)piece) == 1;
    at += piece;
    done += (unsigned long)n;
  }
  if (ok) {
    int n = 0;
    ok = EVP_CipherFinal_ex(ctx, buf + done, &n) == 1; /* checks every padding byte */
    done += (unsigned long)n;
  }
  /* Frees the expanded key schedule after wiping it (OpenSSL cleanses the context). */
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) {
    if (buf != NULL) {
      OPENSSL_cleanse(buf, room); /* what was decrypted before the padding check failed */
      free(buf);
    }
    return 0;
  }
  buf[done] = 0;
  *out = (char *)buf;
  return done;
}

CRYPTFILE_EXPORT unsigned long CBCMode_Decrypt(const char *cipher, char **plain, unsigned long size) {
  return cryptfile_run(0, cipher, plain, size);
}

CRYPTFILE_EXPORT unsigned long CBCMode_Encrypt(const char *plain, char **cipher, unsigned long size) {
  return cryptfile_run(1, plain, cipher, size);
}

#endif /* CRYPTFILE_KEY */
