// The cryptographic operations of a session: digest (local), sign (one round trip in C_Sign /
// C_SignFinal), verify (local). Operation state follows the PKCS#11 v2.40 base specification:
// - C_XInit while an X operation is active: CKR_OPERATION_ACTIVE, the active one is kept;
// - C_Sign/C_SignFinal/C_Digest/C_DigestFinal end the operation on every result except
//   CKR_BUFFER_TOO_SMALL and a successful length query (output buffer NULL);
// - C_Verify/C_VerifyFinal end it on every result (they have no output);
// - an Update (or C_DigestKey) that fails ends it;
// - C_X after C_XUpdate (a single-part call cannot finish a multi-part operation) fails and ends it.
// Argument checks follow the session and operation checks, so a NULL argument ends the operation too.
#include "pkcs11-shim/bridge.h"

#include "common/mechanism.h"
#include "pkcs11-shim/bridge_internal.h"
#include "pkcs11-shim/log.h"

#include <cstdio>
#include <cstring>

namespace p11relay::shim::bridge {
using namespace detail;

namespace {

using Clock = std::chrono::steady_clock;

// Ends the operation and answers `status`.
template <typename Op>
Status end(std::optional<Op>& op, Status status) {
  op.reset();
  return status;
}

Status bad_args(const char* what) { return ck(CKR_ARGUMENTS_BAD, std::string(what) + " is NULL"); }

// Size query convention (v2.40 §5.2): NULL buffer → length and CKR_OK; short buffer → length and
// CKR_BUFFER_TOO_SMALL. Returns true when the caller should go on and produce the output.
Result<bool> output_ready(CK_BYTE_PTR out, CK_ULONG_PTR out_len, size_t needed) {
  if (!out) {
    *out_len = needed;
    return false;
  }
  if (*out_len < needed) {
    *out_len = needed;
    return ck(CKR_BUFFER_TOO_SMALL, "output buffer too small");
  }
  return true;
}

// The preamble of every call on an active operation: module, session, its lock, then
// CKR_OPERATION_NOT_INITIALIZED if the operation `member` is not active; `f(module, session, op)` runs
// under the session lock.
template <typename Op, typename F>
Status with_op(CK_SESSION_HANDLE hSession, std::optional<Op> Session::*member, const char* init, F&& f) {
  ASSIGN_OR_RETURN(auto m, module());
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  std::lock_guard<std::mutex> g(s->mu);
  auto& op = (*s).*member;
  if (!op) return ck(CKR_OPERATION_NOT_INITIALIZED, std::string(init) + " first");
  return f(*m, *s, op);
}

Status write_digest(DigestOp& op, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen) {
  Bytes d = op.hasher.finish();
  std::memcpy(pDigest, d.data(), d.size());
  *pulDigestLen = d.size();
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Digest (local)

Status DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pMechanism) return bad_args("pMechanism");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  std::lock_guard<std::mutex> g(s->mu);
  if (s->digest) return ck(CKR_OPERATION_ACTIVE, "a digest is active");
  auto alg = digest_mechanism_hash(pMechanism->mechanism);
  if (!alg) return ck(CKR_MECHANISM_INVALID, "not a digest mechanism: " + mechanism_name(pMechanism->mechanism));
  s->digest.emplace(*alg);
  return {};
}

Status Digest(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest,
              CK_ULONG_PTR pulDigestLen) {
  return with_op(hSession, &Session::digest, "C_DigestInit", [&](Module&, Session&, auto& op) -> Status {
    if ((!pData && ulDataLen) || !pulDigestLen) return end(op, bad_args("pData or pulDigestLen"));
    if (op->multipart) return end(op, ck(CKR_OPERATION_ACTIVE, "C_Digest after C_DigestUpdate; use C_DigestFinal"));
    auto ready = output_ready(pDigest, pulDigestLen, hash_info(op->hasher.alg()).size);
    if (!ready.ok()) return ready.take_error();  // CKR_BUFFER_TOO_SMALL keeps the operation
    if (!*ready) return {};                      // length query keeps it too
    op->hasher.update({pData, ulDataLen});
    return end(op, write_digest(*op, pDigest, pulDigestLen));
  });
}

Status DigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) {
  return with_op(hSession, &Session::digest, "C_DigestInit", [&](Module&, Session&, auto& op) -> Status {
    if (!pPart && ulPartLen) return end(op, bad_args("pPart"));
    op->hasher.update({pPart, ulPartLen});
    op->multipart = true;
    return {};
  });
}

// The relay's objects are public and private keys; only secret keys can be digested.
Status DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey) {
  return with_op(hSession, &Session::digest, "C_DigestInit", [&](Module& m, Session& s, auto& op) -> Status {
    auto key = visible_object(m, s, hKey, CKR_KEY_HANDLE_INVALID);
    if (!key.ok()) return end(op, key.take_error());
    return end(op, ck(CKR_KEY_INDIGESTIBLE, "only secret keys can be digested; the relay token has none"));
  });
}

Status DigestFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen) {
  return with_op(hSession, &Session::digest, "C_DigestInit", [&](Module&, Session&, auto& op) -> Status {
    if (!pulDigestLen) return end(op, bad_args("pulDigestLen"));
    auto ready = output_ready(pDigest, pulDigestLen, hash_info(op->hasher.alg()).size);
    if (!ready.ok()) return ready.take_error();
    if (!*ready) return {};
    return end(op, write_digest(*op, pDigest, pulDigestLen));
  });
}

// ---------------------------------------------------------------------------------------------
// Sign and verify

namespace {

Result<SignOp> start_op(Module& m, const Session& s, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey, bool sign) {
  ASSIGN_OR_RETURN(auto key, visible_object(m, s, hKey, CKR_KEY_HANDLE_INVALID));
  if (key->cls != CKO_PRIVATE_KEY && key->cls != CKO_PUBLIC_KEY)
    return ck(CKR_KEY_HANDLE_INVALID, "object " + std::to_string(hKey) + " is not a key");
  if (!key->key || key->cls != (sign ? CKO_PRIVATE_KEY : CKO_PUBLIC_KEY))
    return ck(CKR_KEY_FUNCTION_NOT_PERMITTED, sign ? "only private keys sign" : "verify with the public key object");
  const SignMech* mech = find_sign_mechanism(pMechanism->mechanism);
  if (!mech) return ck(CKR_MECHANISM_INVALID, "mechanism " + mechanism_name(pMechanism->mechanism) + " is not supported");
  bool rsa_mech = mech->kind != SignKind::ecdsa;
  if (rsa_mech != (key->key->key_type == CKK_RSA))
    return ck(CKR_KEY_TYPE_INCONSISTENT, mechanism_name(mech->mech) + " does not fit the key type");
  if (!key->key->allows(mech->mech))
    return ck(CKR_MECHANISM_INVALID, mechanism_name(mech->mech) + " is not allowed for key '" + key->key->desc.name + "'");
  SignOp op;
  op.mech = mech;
  op.key = key->key;
  if (mech->kind == SignKind::rsa_pss) {
    ASSIGN_OR_RETURN(op.pss, pss_params(*mech, *pMechanism, key->key->bits));
  }
  if (mech->hash) op.hasher.emplace(*mech->hash);
  return op;
}

// The network part, run without holding the session lock.
Status finish_sign(Module& m, SignOp op, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen) {
  ASSIGN_OR_RETURN(relay::SignRequest req, make_sign_request(*op.mech, op.pss, op.finish(), op.key->signature_size));
  // The key as the application saw it: if it changed since (a renewed certificate), the daemon refuses.
  req.key_version = op.key->version;
  const std::string& name = op.key->desc.name;
  auto t0 = Clock::now();
  auto sig = m.transport().sign(name, req);
  auto ms = [t0] {  // formatted only when a line is logged
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f",
                  std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count() / 1000.0);
    return std::string(buf);
  };
  if (!sig.ok()) {
    Error e = sig.take_error();
    SHIM_LOG(warning, "sign key=" + name + " mech=" + mechanism_name(op.mech->mech) + " failed after " + ms() +
                          " ms: " + e.message + " (" + ckr_text(e.ckr) + ")");
    if (e.ckr == CKR_OK) e.ckr = CKR_DEVICE_ERROR;
    if (e.code == ErrorCode::key_changed) {
      m.mark_stale();
      notice("key changed " + name, "key '" + name + "' has another certificate or public key on the appliance than "
                                    "this process was shown (the key list this machine kept is older than the change); "
                                    "nothing was signed; run the program again: it will see the key as it is now");
    }
    if (e.ckr == CKR_TOKEN_NOT_PRESENT)
      notice("token " + op.key->desc.token.label, "the appliance cannot use its token '" + op.key->desc.token.label +
                                                      "' to sign with key '" + name + "': " + e.message);
    return e;
  }
  SHIM_LOG(debug, "sign key=" + name + " mech=" + mechanism_name(op.mech->mech) + " ok in " + ms() + " ms");
  Bytes out = std::move(sig).value();
  size_t want = op.key->signature_size;
  if (op.mech->kind != SignKind::ecdsa && out.size() < want) out.insert(out.begin(), want - out.size(), 0);
  if (out.size() != want)
    return ck(CKR_DEVICE_ERROR, "daemon returned a " + std::to_string(out.size()) + "-byte signature, expected " +
                                    std::to_string(want));
  std::memcpy(pSignature, out.data(), out.size());
  *pulSignatureLen = out.size();
  return {};
}

// C_Sign and C_SignFinal up to the network call: the operation is taken out of the session (so it
// has ended, whatever the daemon answers) unless this is a length query or the buffer is too small.
// An empty optional with an OK status means "answered without signing".
Result<std::optional<SignOp>> take_sign(Session& s, bool single, bool data_bad, CK_BYTE_PTR pSignature,
                                         CK_ULONG_PTR pulSignatureLen) {
  std::lock_guard<std::mutex> g(s.mu);
  auto& op = s.sign;
  if (!op) return ck(CKR_OPERATION_NOT_INITIALIZED, "C_SignInit first");
  if (data_bad || !pulSignatureLen) return end(op, bad_args("pData or pulSignatureLen")).take_error();
  if (single && op->multipart)
    return end(op, ck(CKR_OPERATION_ACTIVE, "C_Sign after C_SignUpdate; use C_SignFinal")).take_error();
  auto ready = output_ready(pSignature, pulSignatureLen, op->key->signature_size);
  if (!ready.ok()) return ready.take_error();             // CKR_BUFFER_TOO_SMALL keeps the operation
  if (!*ready) return std::optional<SignOp>();             // length query: no network, operation kept
  std::optional<SignOp> taken = std::move(op);
  op.reset();
  return taken;
}

Status start(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey, bool sign) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pMechanism) return bad_args("pMechanism");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  std::lock_guard<std::mutex> g(s->mu);
  auto& slot = sign ? s->sign : s->verify;
  if (slot) return ck(CKR_OPERATION_ACTIVE, sign ? "a signature is active" : "a verification is active");
  ASSIGN_OR_RETURN(SignOp op, start_op(*m, *s, pMechanism, hKey, sign));
  slot = std::move(op);
  return {};
}

Status update(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, bool sign) {
  return with_op(hSession, sign ? &Session::sign : &Session::verify, sign ? "C_SignInit" : "C_VerifyInit",
                 [&](Module&, Session&, auto& op) -> Status {
                   if (!pPart && ulPartLen) return end(op, bad_args("pPart"));
                   op->update({pPart, ulPartLen});
                   op->multipart = true;
                   return {};
                 });
}

}  // namespace

Status SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  return start(hSession, pMechanism, hKey, true);
}

Status Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
            CK_ULONG_PTR pulSignatureLen) {
  ASSIGN_OR_RETURN(auto m, module());
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  ASSIGN_OR_RETURN(auto op, take_sign(*s, true, !pData && ulDataLen, pSignature, pulSignatureLen));
  if (!op) return {};
  op->update({pData, ulDataLen});
  return finish_sign(*m, std::move(*op), pSignature, pulSignatureLen);
}

Status SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) {
  return update(hSession, pPart, ulPartLen, true);
}

Status SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen) {
  ASSIGN_OR_RETURN(auto m, module());
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  ASSIGN_OR_RETURN(auto op, take_sign(*s, false, false, pSignature, pulSignatureLen));
  if (!op) return {};
  return finish_sign(*m, std::move(*op), pSignature, pulSignatureLen);
}

Status VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  return start(hSession, pMechanism, hKey, false);
}

namespace {

// C_Verify / C_VerifyFinal: every result ends the operation (there is no output to size).
Status finish_verify(CK_SESSION_HANDLE hSession, std::span<const std::uint8_t> data, bool single, bool data_bad,
                     CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen) {
  return with_op(hSession, &Session::verify, "C_VerifyInit", [&](Module&, Session&, auto& op) -> Status {
    if (data_bad || !pSignature) return end(op, bad_args("pData or pSignature"));
    if (single && op->multipart)
      return end(op, ck(CKR_OPERATION_ACTIVE, "C_Verify after C_VerifyUpdate; use C_VerifyFinal"));
    if (single) op->update(data);
    Bytes input = op->finish();  // for CKM_SHA*_RSA_PKCS OpenSSL builds the DigestInfo from the digest
    return end(op, verify_signature(op->key->public_key.get(), *op->mech, op->pss, input,
                                    {pSignature, ulSignatureLen}, op->key->signature_size));
  });
}

}  // namespace

Status Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
              CK_ULONG ulSignatureLen) {
  return finish_verify(hSession, {pData, pData ? ulDataLen : 0}, true, !pData && ulDataLen, pSignature,
                       ulSignatureLen);
}

Status VerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) {
  return update(hSession, pPart, ulPartLen, false);
}

Status VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen) {
  return finish_verify(hSession, {}, false, false, pSignature, ulSignatureLen);
}

}  // namespace p11relay::shim::bridge
