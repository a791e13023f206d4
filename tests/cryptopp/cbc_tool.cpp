// Test helper: AES-CBC with PKCS#7 through Crypto++, the way the fork's C++ side does it
// (CBC_Mode<AES> + StreamTransformationFilter, default padding = PKCS#7).
//
//   cbc_tool encrypt|decrypt IN OUT  < keyfile
//
// The key and IV come from stdin (two lines of hex: key, then IV), never from argv, so they do
// not show in a process list. Exit 0 on success; 1 with Crypto++'s message (e.g. invalid
// padding) on failure; 2 on usage errors.
#include <cryptopp/aes.h>
#include <cryptopp/filters.h>
#include <cryptopp/files.h>
#include <cryptopp/hex.h>
#include <cryptopp/modes.h>

#include <iostream>
#include <string>

namespace {

CryptoPP::SecByteBlock FromHex(const std::string& hex) {
  std::string raw;
  CryptoPP::StringSource(hex, true, new CryptoPP::HexDecoder(new CryptoPP::StringSink(raw)));
  return CryptoPP::SecByteBlock(reinterpret_cast<const CryptoPP::byte*>(raw.data()), raw.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: cbc_tool encrypt|decrypt IN OUT < keyfile\n";
    return 2;
  }
  const std::string mode = argv[1];
  std::string key_hex, iv_hex;
  if (!std::getline(std::cin, key_hex) || !std::getline(std::cin, iv_hex)) {
    std::cerr << "expected two lines on stdin: key hex, IV hex\n";
    return 2;
  }
  const CryptoPP::SecByteBlock key = FromHex(key_hex), iv = FromHex(iv_hex);
  try {
    if (mode == "encrypt") {
      CryptoPP::CBC_Mode<CryptoPP::AES>::Encryption enc;
      enc.SetKeyWithIV(key, key.size(), iv, iv.size());
      CryptoPP::FileSource(argv[2], true,
                           new CryptoPP::StreamTransformationFilter(
                               enc, new CryptoPP::FileSink(argv[3])));
    } else if (mode == "decrypt") {
      CryptoPP::CBC_Mode<CryptoPP::AES>::Decryption dec;
      dec.SetKeyWithIV(key, key.size(), iv, iv.size());
      CryptoPP::FileSource(argv[2], true,
                           new CryptoPP::StreamTransformationFilter(
                               dec, new CryptoPP::FileSink(argv[3])));
    } else {
      std::cerr << "unknown mode " << mode << "\n";
      return 2;
    }
  } catch (const CryptoPP::Exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
