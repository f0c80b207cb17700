// Tokens and objects built locally from one GET /v1/keys answer (docs/architecture.md, failure mode 4):
// C_FindObjects* and C_GetAttributeValue never go to the network.
#pragma once

#include "common/error.h"
#include "common/openssl_ptr.h"
#include "common/relay_api.h"

#include <p11-kit/pkcs11.h>

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace p11relay::shim {

// What the shim needs to sign and verify with one remote key.
struct KeyInfo {
  relay::KeyDescription desc;
  EVP_PKEY_ptr public_key;
  CK_KEY_TYPE key_type = CKK_RSA;
  std::vector<CK_MECHANISM_TYPE> mechanisms;  // shim mechanisms usable with this key (CKA_ALLOWED_MECHANISMS)
  size_t signature_size = 0;                  // RSA: modulus bytes; EC: 2 * order bytes (r||s)
  int bits = 0;
  std::string version;  // relay::key_version(desc): every sign request carries it

  bool allows(CK_MECHANISM_TYPE m) const;
};

struct Object {
  CK_OBJECT_HANDLE handle = 0;
  CK_OBJECT_CLASS cls = CKO_DATA;
  bool is_private = false;
  std::map<CK_ATTRIBUTE_TYPE, Bytes> attrs;
  std::set<CK_ATTRIBUTE_TYPE> sensitive;  // answered with CKR_ATTRIBUTE_SENSITIVE
  std::shared_ptr<const KeyInfo> key;      // key objects only

  // PKCS#11 v2.40 §5.7 semantics for one template; returns CKR_OK or the error to report while still
  // filling every attribute it can.
  CK_RV get_attributes(CK_ATTRIBUTE_PTR templ, CK_ULONG count) const;
  bool matches(const CK_ATTRIBUTE* templ, CK_ULONG count) const;
};

// The shim's view of one remote token (a slot): its description and the objects built from the daemon's
// key list. (The daemon's Token is the token itself, behind its PKCS#11 module.)
struct TokenView {
  CK_SLOT_ID slot_id = 0;
  relay::TokenDescription desc;
  bool present = true;
  std::string problem;  // why the appliance cannot use this token (a slot without a token), for the user
  std::vector<std::shared_ptr<const Object>> objects;  // in a stable order
  std::vector<std::shared_ptr<const KeyInfo>> keys;

  std::shared_ptr<const Object> object(CK_OBJECT_HANDLE h) const;
  // Union of the key mechanisms, and RSA/EC key sizes for C_GetMechanismInfo.
  std::vector<CK_MECHANISM_TYPE> mechanisms() const;
};

// Stable identifiers across refreshes of the key list: slot IDs from the token identity, object handles
// from (slot, key, object kind). Never reuses a value inside one process.
class IdAllocator {
 public:
  CK_SLOT_ID slot_id(const relay::TokenDescription& t);
  CK_OBJECT_HANDLE object_handle(const std::string& identity);

 private:
  std::mutex mu_;
  std::map<std::string, CK_SLOT_ID> slots_;
  std::set<CK_SLOT_ID> used_slots_;
  std::map<std::string, CK_OBJECT_HANDLE> handles_;
  CK_OBJECT_HANDLE next_handle_ = 1;
};

// Key description → KeyInfo (parses the SPKI, works out mechanisms and signature size).
Result<std::shared_ptr<KeyInfo>> make_key_info(const relay::KeyDescription& desc);

// Groups keys by token and builds private key, public key and certificate objects for each.
// Keys that cannot be understood are skipped with a message in `warnings`.
std::vector<std::shared_ptr<TokenView>> build_tokens(const std::vector<relay::KeyDescription>& keys, IdAllocator& ids,
                                                 std::vector<std::string>& warnings);

// Template helpers (also used by tests).
Bytes attr_bool(bool v);
Bytes attr_ulong(CK_ULONG v);

}  // namespace p11relay::shim
