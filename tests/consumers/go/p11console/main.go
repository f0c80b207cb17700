// p11console does with a PKCS#11 module what a signing console does with the five fields of its
// "PKCS#11 token" option: module path, token label, key ID in hex, certificate file, PIN. It uses the
// Go PKCS#11 stack consoles are built on (github.com/miekg/pkcs11 and github.com/ThalesIgnite/crypto11,
// which open every session as CKF_SERIAL_SESSION|CKF_RW_SESSION).
//
// It finds the token by label and the private key by CKA_ID, logs in with the PIN (read from standard
// input, never from argv), checks that the token's certificate object with the same CKA_ID is the
// certificate file and matches the key, and signs the message file with every scheme the key supports:
// RSA PKCS#1 v1.5 and RSA-PSS (salt length = hash length) for RSA keys, ECDSA for EC keys, all over
// SHA-256. Each signature goes to OUTDIR/<scheme>.sig for an independent verifier; one line per
// signature on stdout ("signed <scheme> <bytes>"). Exit 0 when all is done, 1 with a message otherwise.
package main

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ThalesIgnite/crypto11"
	"github.com/miekg/pkcs11"
)

type fields struct {
	module, token, keyID, certFile, message, outDir string
	pin                                               string
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "p11console: "+format+"\n", args...)
	os.Exit(1)
}

func readFields() fields {
	var f fields
	flag.StringVar(&f.module, "module", "", "PKCS#11 module path")
	flag.StringVar(&f.token, "token", "", "token label")
	flag.StringVar(&f.keyID, "id", "", "key ID (CKA_ID) in hex")
	flag.StringVar(&f.certFile, "cert", "", "certificate (PEM)")
	flag.StringVar(&f.message, "in", "", "file to sign")
	flag.StringVar(&f.outDir, "out", "", "directory for the signatures")
	flag.Parse()
	if f.module == "" || f.token == "" || f.keyID == "" || f.certFile == "" || f.message == "" || f.outDir == "" {
		fail("usage: p11console -module SO -token LABEL -id HEX -cert PEM -in FILE -out DIR < pin")
	}
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && line == "" {
		fail("no PIN on standard input")
	}
	f.pin = strings.TrimRight(line, "\r\n")
	return f
}

func loadCert(path string) *x509.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		fail("%s: no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		fail("%s: %v", path, err)
	}
	return cert
}

// lowLevelLookup does what a console written against miekg/pkcs11 directly does: the slot whose token
// has the label, an R/W session, login, the private key by CKA_ID. It returns the key's CKA_KEY_TYPE.
func lowLevelLookup(f fields, id []byte) uint {
	p := pkcs11.New(f.module)
	if p == nil {
		fail("%s: cannot load the module", f.module)
	}
	if err := p.Initialize(); err != nil {
		fail("C_Initialize: %v", err)
	}
	defer p.Destroy()
	defer p.Finalize()
	slot := findSlot(p, f.token)
	s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		fail("C_OpenSession(CKF_SERIAL_SESSION|CKF_RW_SESSION): %v", err)
	}
	defer p.CloseSession(s)
	if err := p.Login(s, pkcs11.CKU_USER, f.pin); err != nil {
		fail("C_Login: %v", err)
	}
	defer p.Logout(s)
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id)}
	if err := p.FindObjectsInit(s, tmpl); err != nil {
		fail("C_FindObjectsInit: %v", err)
	}
	objs, _, err := p.FindObjects(s, 2)
	p.FindObjectsFinal(s)
	if err != nil || len(objs) != 1 {
		fail("private key with CKA_ID %x: %d found (%v)", id, len(objs), err)
	}
	attrs, err := p.GetAttributeValue(s, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
	if err != nil {
		fail("C_GetAttributeValue(CKA_KEY_TYPE): %v", err)
	}
	return uint(bytesToUlong(attrs[0].Value))
}

func findSlot(p *pkcs11.Ctx, label string) uint {
	slots, err := p.GetSlotList(true)
	if err != nil {
		fail("C_GetSlotList: %v", err)
	}
	for _, slot := range slots {
		info, err := p.GetTokenInfo(slot)
		if err == nil && info.Label == label {
			return slot
		}
	}
	fail("no token labelled %q among %d slots", label, len(slots))
	return 0
}

func bytesToUlong(b []byte) uint64 {
	var v uint64
	for i := len(b) - 1; i >= 0; i-- { // CK_ULONG in host (little-endian) order
		v = v<<8 | uint64(b[i])
	}
	return v
}

// checkCertificate: the token's certificate object with the key's CKA_ID is the console's certificate
// file, and its public key is the key pair's.
func checkCertificate(ctx *crypto11.Context, id []byte, want *x509.Certificate, signer crypto.Signer) {
	onToken, err := ctx.FindCertificate(id, nil, nil)
	if err != nil || onToken == nil {
		fail("certificate object with CKA_ID %x: not found (%v)", id, err)
	}
	if !bytes.Equal(onToken.Raw, want.Raw) {
		fail("the token's certificate with CKA_ID %x is not the certificate file", id)
	}
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		fail("public key of the key pair: %v", err)
	}
	certPub, _ := x509.MarshalPKIXPublicKey(want.PublicKey)
	if !bytes.Equal(pub, certPub) {
		fail("the key with CKA_ID %x does not match the certificate", id)
	}
	fmt.Println("certificate ok", want.Subject.String())
}

func sign(signer crypto.Signer, digest []byte, opts crypto.SignerOpts, outDir, scheme string) {
	sig, err := signer.Sign(rand.Reader, digest, opts)
	if err != nil {
		fail("%s signature: %v", scheme, err)
	}
	if err := os.WriteFile(filepath.Join(outDir, scheme+".sig"), sig, 0o644); err != nil {
		fail("%v", err)
	}
	fmt.Printf("signed %s %d\n", scheme, len(sig))
}

func main() {
	f := readFields()
	id, err := hex.DecodeString(f.keyID)
	if err != nil || len(id) == 0 {
		fail("key ID %q is not hex", f.keyID)
	}
	cert := loadCert(f.certFile)
	keyType := lowLevelLookup(f, id)
	ctx, err := crypto11.Configure(&crypto11.Config{Path: f.module, TokenLabel: f.token, Pin: f.pin})
	if err != nil {
		fail("crypto11: %v", err)
	}
	defer ctx.Close()
	signer, err := ctx.FindKeyPair(id, nil)
	if err != nil || signer == nil {
		fail("key pair with CKA_ID %x: not found (%v)", id, err)
	}
	checkCertificate(ctx, id, cert, signer)
	msg, err := os.ReadFile(f.message)
	if err != nil {
		fail("%v", err)
	}
	digest := sha256.Sum256(msg)
	switch signer.Public().(type) {
	case *rsa.PublicKey:
		if keyType != pkcs11.CKK_RSA {
			fail("CKA_KEY_TYPE %d for an RSA key", keyType)
		}
		sign(signer, digest[:], crypto.SHA256, f.outDir, "pkcs1")
		sign(signer, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256},
			f.outDir, "pss")
	case *ecdsa.PublicKey:
		if keyType != pkcs11.CKK_EC {
			fail("CKA_KEY_TYPE %d for an EC key", keyType)
		}
		sign(signer, digest[:], crypto.SHA256, f.outDir, "ecdsa")
	default:
		fail("unsupported key type %T", signer.Public())
	}
}
