// The pieces `p11relay sign` shares between container formats (PE in authenticode.cpp, MSI in
// sign_msi.cpp, cabinets, catalogs and scripts in theirs): options, the session with the daemon, and the SignedData made over a format's
// SpcIndirectDataContent (only the digest of the signed attributes is sent; timestamp added here).
#pragma once

#include "client/cli/cli.h"
#include "common/authenticode/signed_data.h"
#include "common/authenticode/verify.h"
#include "common/digest.h"

#include <sys/stat.h>

#include <string>
#include <vector>

namespace p11relay::cli {

struct SignOptions {
  std::string key, file, output, digest = "sha256", timestamp_url, tsa_cafile, description, url;
  bool page_hashes = false, append = false, signing_time = false, msi_extended = false;
  int timestamp_timeout = 30;
};

struct Signing {
  std::unique_ptr<client::Client> c;
  relay::KeyDescription key;
  std::vector<X509_ptr> chain;
  std::vector<X509*> chain_ptrs;
};

Result<HashAlg> check_sign_options(const SignOptions& o);
Result<Signing> open_signing(const Globals& g, const SignOptions& o);
// The SignedData over `spc` (an SpcIndirectDataContent, or a catalog's trust list with its content type).
Result<Bytes> make_signature(const Globals& g, Signing& s, const SignOptions& o, HashAlg alg,
                             std::span<const uint8_t> spc, uint64_t size,
                             const char* content_type = authenticode::oid::kSpcIndirectData);
// For a format without the PE or MSI options (scripts, cabinets): refuses --page-hashes and --msi-extended.
Status only_plain_sign_options(const SignOptions& o);
// The input of a container format's sign (MSI, cabinet, catalog, script): the output path (the input when no
// --output), the input's size and times before hashing (for check_unchanged), the input mapped read-only.
struct SignInput {
  std::string output;
  struct stat before {};
  MappedFile in;
};
Result<SignInput> open_sign_input(const SignOptions& o);
// The file must still be the one that was hashed (size and mtime as before).
Status check_unchanged(const std::string& path, const struct stat& before);
// --append: `sd` nested in the file's own signature `existing` (a view into the file or its parse, not copied);
// refused with the reason when the file's signature is not one (its check failed).
using ByteSpan = std::span<const std::uint8_t>;
Result<Bytes> nest_signature(const std::string& file, const Result<ByteSpan>& existing, const Bytes& sd);
// The line that ends every sign: "signed OUTPUT with key 'KEY' (PART, PART…)", empty parts left out.
void print_signed(const std::string& output, const std::string& key, std::initializer_list<std::string_view> parts);

enum class FileType { pe, msi, cab, cat, script };
// From the content: OLE compound file (MSI), MSCF (cabinet), PKCS#7 SignedData (catalog); a script by its name (.ps1 …: text has no
// magic); anything else is PE (the PE parser names what is wrong).
Result<FileType> detect_file_type(const std::string& path);

Status run_sign_msi(const Globals& g, const SignOptions& o);
Status run_sign_script(const Globals& g, const SignOptions& o);
Status run_sign_cab(const Globals& g, const SignOptions& o);
Status run_sign_cat(const Globals& g, const SignOptions& o);
// Prints the report; returns the primary SignedData (for the chain check).
Result<Bytes> run_verify_msi(const std::string& path);
Result<Bytes> run_verify_cab(const std::string& path);
Result<Bytes> run_verify_cat(const std::string& path);
Result<Bytes> run_verify_script(const std::string& path);
// `p11relay verify`'s report of one signature of a file without a PE checksum (MSI, cabinet, script).
void print_signature(const authenticode::SignatureReport& s, const char* type);

}  // namespace p11relay::cli
