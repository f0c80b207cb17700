// Owning handles for OpenSSL objects (kmsp11's MAKE_DELETER idea).
#pragma once

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pkcs7.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>

namespace p11relay {

#define P11R_OSSL_PTR(T, free_fn)                  \
  struct T##_deleter {                             \
    void operator()(T* p) const noexcept { free_fn(p); } \
  };                                               \
  using T##_ptr = std::unique_ptr<T, T##_deleter>

P11R_OSSL_PTR(BIO, BIO_free_all);
P11R_OSSL_PTR(X509, X509_free);
P11R_OSSL_PTR(EVP_PKEY, EVP_PKEY_free);
P11R_OSSL_PTR(EVP_PKEY_CTX, EVP_PKEY_CTX_free);
P11R_OSSL_PTR(EVP_MD_CTX, EVP_MD_CTX_free);
P11R_OSSL_PTR(SSL_CTX, SSL_CTX_free);
P11R_OSSL_PTR(SSL, SSL_free);
P11R_OSSL_PTR(SSL_SESSION, SSL_SESSION_free);
P11R_OSSL_PTR(X509_STORE, X509_STORE_free);
P11R_OSSL_PTR(X509_STORE_CTX, X509_STORE_CTX_free);
P11R_OSSL_PTR(PKCS7, PKCS7_free);
P11R_OSSL_PTR(OSSL_PARAM, OSSL_PARAM_free);
P11R_OSSL_PTR(OSSL_PARAM_BLD, OSSL_PARAM_BLD_free);
P11R_OSSL_PTR(BIGNUM, BN_free);
P11R_OSSL_PTR(ASN1_OBJECT, ASN1_OBJECT_free);
P11R_OSSL_PTR(ASN1_OCTET_STRING, ASN1_OCTET_STRING_free);
P11R_OSSL_PTR(ECDSA_SIG, ECDSA_SIG_free);
P11R_OSSL_PTR(X509_EXTENSION, X509_EXTENSION_free);

// Memory OpenSSL allocated for the caller (i2d_* output, PEM_read_bio's name/header/body, X509_NAME_oneline).
struct OPENSSL_buffer_deleter {
  void operator()(void* p) const noexcept { OPENSSL_free(p); }
};
template <typename T>
using OpenSSL_buffer = std::unique_ptr<T, OPENSSL_buffer_deleter>;

struct X509_stack_deleter {
  void operator()(STACK_OF(X509) * s) const noexcept { sk_X509_pop_free(s, X509_free); }
};
using X509_stack_ptr = std::unique_ptr<STACK_OF(X509), X509_stack_deleter>;

// The last OpenSSL error queue entries as one line (and clears the queue). Never contains key material.
std::string openssl_error_string();

}  // namespace p11relay
