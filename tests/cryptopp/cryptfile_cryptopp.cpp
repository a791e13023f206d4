// Test helper: the fork's crypt tool shape on Crypto++, with the ABI the TensorFlow fork dlopen()s.
//
//   extern "C" unsigned long CBCMode_Decrypt(const char *cipher, char **plain, unsigned long size);
//   extern "C" unsigned long CBCMode_Encrypt(const char *plain, char **cipher, unsigned long size);
//
// CBC_Mode<AES> + StreamTransformationFilter (default padding: PKCS#7), the key compiled in from
// the same header forkops writes for its own library (g++ -include HEADER ... -lcrypto++).
// Returns the output length and sets *out (malloc'd, NUL-terminated); 0 and NULL on any
// Crypto++ exception (bad padding, a size that is not a multiple of 16).
#include <cryptopp/aes.h>
#include <cryptopp/filters.h>
#include <cryptopp/modes.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace {

const CryptoPP::byte kKey[] = CRYPTFILE_KEY;
const CryptoPP::byte kIv[] = CRYPTFILE_IV;
static_assert(sizeof(kKey) == CRYPTFILE_KEY_LEN, "key length");

template <typename Mode>
unsigned long Run(const char *in, char **out, unsigned long size) {
  if (out == nullptr) return 0;
  *out = nullptr;
  if (in == nullptr) return 0;
  std::string result;
  try {
    Mode mode;
    mode.SetKeyWithIV(kKey, sizeof(kKey), kIv, sizeof(kIv));
    CryptoPP::StringSource(reinterpret_cast<const CryptoPP::byte *>(in), size, true,
                           new CryptoPP::StreamTransformationFilter(mode, new CryptoPP::StringSink(result)));
  } catch (const CryptoPP::Exception &) {
    return 0;
  }
  char *buf = static_cast<char *>(std::malloc(result.size() + 1));
  if (buf == nullptr) return 0;
  std::memcpy(buf, result.data(), result.size());
  buf[result.size()] = 0;
  *out = buf;
  return result.size();
}

}  // namespace

extern "C" unsigned long CBCMode_Decrypt(const char *cipher, char **plain, unsigned long size) {
  return Run<CryptoPP::CBC_Mode<CryptoPP::AES>::Decryption>(cipher, plain, size);
}

extern "C" unsigned long CBCMode_Encrypt(const char *plain, char **cipher, unsigned long size) {
  return Run<CryptoPP::CBC_Mode<CryptoPP::AES>::Encryption>(plain, cipher, size);
}
