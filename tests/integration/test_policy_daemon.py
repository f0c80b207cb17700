#!/usr/bin/python3
"""Daemon side: key policies, quotas and the approval workflow against the real p11relayd, a real
SoftHSMv2 token and real mutual TLS, driven over HTTP from Python (docs/policy.md)."""
import base64
import hashlib
import json
import threading
import time
import unittest

import harness
import relic_client
from harness import DaemonTest, ecdsa_raw_to_der, openssl_verify

SHA256_DI = bytes.fromhex("3031300d060960864801650304020105000420")
SHA1_DI = bytes.fromhex("3021300906052b0e03021a05000414")
MD5_DI = bytes.fromhex("3020300c06082a864886f70d020505000410")


class PolicyTest(DaemonTest):
    """ec256: approval required (admins approve); ec256short: the same key, requests expire after 2 s, and
    clients with the admin role (bob) sign at once;
    ec384: auto-approved with a quota of 3 per hour; rsa2048: approval required (relic uploads);
    rsapss: no policy at all (the defaults)."""
    start_daemon = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        st = cls.st
        cls.demo = st.client
        cls.alice = st.make_client("alice", roles=["admin"])                 # approver only
        cls.bob = st.make_client("bob", roles=["admin", "signers"])          # approver who also signs
        cls.dev = st.make_client("dev", roles=["signers"])                   # a second developer
        cfg = st.daemon_config(clients=[cls.demo, cls.alice, cls.bob, cls.dev])
        cfg["server"]["statedir"] = "policy-state"
        keys = cfg["keys"]
        keys["ec256"]["policy"] = {"approval": "required", "approvers": ["admin"]}
        keys["ec256short"] = dict(keys["ec256"], policy={"approval": "required", "approvaltimeout": 2,
                                                           "autoapprove": ["admin"]})
        keys["ec384"]["policy"] = {"quota": {"perhour": 3}}
        keys["rsa2048"]["policy"] = {"approval": "required", "sigtypes": ["pe-coff"]}
        st.write_config(config=cfg)
        cls.audit = st.state_dir / "audit.log"
        cls.daemon.start()

    # -- helpers -------------------------------------------------------------------------------------------
    def post_sign(self, key, data, client=None, mechanism="CKM_ECDSA", **extra):
        body = {"mechanism": mechanism, "input": base64.b64encode(data).decode(), **extra}
        st, h, resp = self.daemon.request("POST", f"/v1/keys/{key}/sign", body, client=client)
        return st, h, json.loads(resp) if resp else {}

    def get(self, path, client=None):
        st, h, resp = self.daemon.request("GET", path, client=client)
        return st, json.loads(resp) if resp else {}

    def decide(self, rid, action, client, body=None):
        st, _, resp = self.daemon.request("POST", f"/v1/requests/{rid}/{action}", body or {}, client=client)
        return st, json.loads(resp) if resp else {}

    def held(self, key="ec256", data=None, client=None):
        data = data or hashlib.sha256(str(time.monotonic_ns()).encode()).digest()
        st, h, body = self.post_sign(key, data, client=client)
        self.assertEqual(st, 202, body)
        rid = body["request"]["id"]
        self.assertEqual(h["location"], f"/v1/requests/{rid}")
        self.assertEqual(body["request"]["state"], "pending")
        return rid, data

    def decide_when_listed(self, filename, action, body, out):
        """Approver thread: waits for a relic upload's request to appear in alice's list, then decides it."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _, listing = self.get("/v1/requests", client=self.alice)
            mine = [r for r in listing["requests"] if r.get("filename") == filename]
            if mine:
                out["id"], out["list"] = mine[0]["id"], mine[0]
                out["result"] = self.decide(mine[0]["id"], action, self.alice, body)
                return
            time.sleep(0.2)

    def audit_lines(self):
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]

    def verify_ec(self, key, digest, sig_b64):
        raw = base64.b64decode(sig_b64)
        self.assertTrue(openssl_verify(self.st.keys[key].certfile, digest, ecdsa_raw_to_der(raw), self.tmp))

    # -- policy rules ----------------------------------------------------------------------------------------
    def test_key_without_policy_signs_at_once_but_refuses_md5_sha1_and_raw_input(self):
        d = hashlib.sha256(b"plain").digest()
        st, _, body = self.post_sign("rsapss", SHA256_DI + d, mechanism="CKM_RSA_PKCS")
        self.assertEqual(st, 200, body)
        for data, what in ((MD5_DI + hashlib.md5(b"x").digest(), "md5"),
                           (SHA1_DI + hashlib.sha1(b"x").digest(), "sha1"),
                           (b"raw bytes, no DigestInfo", "none")):
            st, _, body = self.post_sign("rsapss", data, mechanism="CKM_RSA_PKCS")
            self.assertEqual(st, 403, body)
            self.assertEqual(body["code"], "policy-denied")
            self.assertEqual(body["ckr"], "0x00000200")  # CKR_FUNCTION_REJECTED
            self.assertIn(what, body["detail"])

    def test_ecdsa_sha1_by_length_refused(self):
        st, _, body = self.post_sign("ec384", hashlib.sha1(b"x").digest())
        self.assertEqual((st, body["code"]), (403, "policy-denied"), body)

    def test_quota_refuses_the_fourth_signature_and_survives_a_restart(self):
        for i in range(3):
            st, _, body = self.post_sign("ec384", hashlib.sha384(bytes([i])).digest())
            self.assertEqual(st, 200, body)
        st, h, body = self.post_sign("ec384", hashlib.sha384(b"one too many").digest())
        self.assertEqual(st, 429, body)
        self.assertEqual(body["code"], "quota-exceeded")
        self.assertTrue(0 < int(h["retry-after"]) <= 3600, h)
        # per (client, key): another client still has its own three
        st, _, body = self.post_sign("ec384", hashlib.sha384(b"dev").digest(), client=self.dev)
        self.assertEqual(st, 200, body)
        self.daemon.restart()
        st, _, body = self.post_sign("ec384", hashlib.sha384(b"after restart").digest())
        self.assertEqual(st, 429, body)

    # -- approval workflow ----------------------------------------------------------------------------------
    def test_key_list_says_per_client_which_keys_wait_for_an_approver(self):
        def approval(client):
            st, body = self.get("/v1/keys", client=client)
            self.assertEqual(st, 200, body)
            return {k["name"]: k.get("approval") for k in body["keys"]}

        demo = approval(None)
        self.assertEqual({k: demo[k] for k in ("ec256", "ec256short", "rsa2048", "ec384", "rsapss")},
                         {"ec256": "required", "ec256short": "required", "rsa2048": "required",
                          "ec384": None, "rsapss": None})
        bob = approval(self.bob)  # autoapprove role for ec256short only
        self.assertEqual((bob["ec256"], bob["ec256short"]), ("required", None))
        # the field says what signing does: bob signs ec256short at once, ec256 is held
        d = hashlib.sha256(b"bob autoapproved").digest()
        st, _, body = self.post_sign("ec256short", d, client=self.bob)
        self.assertEqual(st, 200, body)
        self.verify_ec("ec256", d, body["signature"])  # the same token key
        self.held(client=self.bob)

    def test_approval_then_the_poller_gets_a_signature_that_verifies(self):
        rid, d = self.held()
        st, req = self.get(f"/v1/requests/{rid}")
        self.assertEqual((st, req["state"]), (200, "pending"))
        self.assertEqual(req["digest"], "sha256")
        self.assertEqual(req["input_sha256"], hashlib.sha256(d).hexdigest())
        st, listing = self.get("/v1/requests", client=self.alice)
        self.assertIn(rid, [r["id"] for r in listing["requests"]])
        st, listing = self.get("/v1/requests", client=self.dev)  # not an approver: empty, not an error
        self.assertEqual((st, listing), (200, {"requests": []}))
        result = {}

        def poll():
            result["poll"] = self.get(f"/v1/requests/{rid}?wait=20")

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.5)
        st, req = self.decide(rid, "approve", self.alice, {"comment": "release 1.2"})
        self.assertEqual(st, 200, req)
        self.assertEqual((req["state"], req["decided_by"]), ("signed", "alice"))
        self.assertNotIn("signature", req)  # the approver does not get it
        t.join(30)
        st, req = result["poll"]
        self.assertEqual((st, req["state"]), (200, "signed"))
        self.verify_ec("ec256", d, req["signature"])
        rec = [r for r in self.audit_lines() if r.get("request_id") == rid]
        self.assertEqual([r.get("operation", r.get("sig.type")) for r in rec], ["request", "approve", "CKM_ECDSA"])
        self.assertEqual(rec[1]["approver"], "alice")
        self.assertEqual(rec[2]["approved_by"], "alice")

    def test_deny_gives_state_denied_with_the_reason(self):
        rid, _ = self.held()
        st, body = self.decide(rid, "deny", self.alice, {})
        self.assertEqual((st, body["code"]), (400, "bad-request"), body)  # a reason is required
        st, req = self.decide(rid, "deny", self.alice, {"reason": "no change ticket"})
        self.assertEqual((st, req["state"], req["reason"]), (200, "denied", "no change ticket"))
        st, req = self.get(f"/v1/requests/{rid}?wait=5")
        self.assertEqual((req["state"], req["decided_by"], req["reason"]), ("denied", "alice", "no change ticket"))
        st, body = self.decide(rid, "approve", self.bob)
        self.assertEqual((st, body["code"]), (409, "not-pending"))
        self.assertTrue(any(r.get("operation") == "deny" and r.get("reason") == "no change ticket"
                            for r in self.audit_lines() if r.get("request_id") == rid))

    def test_expiry(self):
        rid, _ = self.held("ec256short")
        t0 = time.monotonic()
        st, req = self.get(f"/v1/requests/{rid}?wait=10")
        self.assertEqual((st, req["state"]), (200, "expired"))
        self.assertLess(time.monotonic() - t0, 8, "the long-poll answers at the expiry, not at the end of the wait")
        st, body = self.decide(rid, "approve", self.alice)
        self.assertEqual((st, body["code"]), (409, "not-pending"))
        self.assertTrue(any(r.get("operation") == "expire" for r in self.audit_lines() if r.get("request_id") == rid))

    def test_expiry_is_audited_on_time_when_nobody_reads_the_request(self):
        rid, _ = self.held("ec256short")  # approvaltimeout 2 s; from here on nobody asks the daemon about it
        t0 = time.monotonic()
        expired = []
        while not expired and time.monotonic() - t0 < 10:
            time.sleep(0.1)
            expired = [r for r in self.audit_lines() if r.get("request_id") == rid and r.get("operation") == "expire"]
        self.assertTrue(expired, "no expire line in the audit log 10 s after a 2 s approvaltimeout")
        self.assertGreater(time.monotonic() - t0, 1.0, "expired before its approvaltimeout")
        self.assertLess(time.monotonic() - t0, 5.0, "the expire line came late")
        self.assertEqual(len(expired), 1)
        st, req = self.get(f"/v1/requests/{rid}")
        self.assertEqual((st, req["state"]), (200, "expired"))

    def test_non_admin_cannot_approve_nor_see_others_requests(self):
        rid, _ = self.held()
        st, body = self.decide(rid, "approve", self.dev)
        self.assertEqual((st, body["code"]), (403, "forbidden"))
        st, body = self.get(f"/v1/requests/{rid}", client=self.dev)
        self.assertEqual((st, body["code"]), (403, "forbidden"))
        st, body = self.get("/v1/requests/r-0000000000000000", client=self.alice)  # unknown: the same answer
        self.assertEqual((st, body["code"]), (403, "forbidden"))
        st, req = self.get(f"/v1/requests/{rid}")
        self.assertEqual(req["state"], "pending")

    def test_self_approval_refused_self_denial_allowed(self):
        rid, _ = self.held(client=self.bob)
        st, body = self.decide(rid, "approve", self.bob)
        self.assertEqual((st, body["code"]), (403, "self-approval"))
        st, req = self.decide(rid, "deny", self.bob, {"reason": "pushed by mistake"})
        self.assertEqual((st, req["state"]), (200, "denied"))

    def test_retry_is_idempotent_and_nothing_is_signed_twice(self):
        d = hashlib.sha256(b"retry me").digest()
        rid, _ = self.held(data=d)
        rid2, _ = self.held(data=d)
        self.assertEqual(rid, rid2)
        other, _ = self.held(data=d, client=self.dev)  # another client: its own request
        self.assertNotEqual(other, rid)
        st, req = self.decide(rid, "approve", self.alice)
        self.assertEqual(req["state"], "signed")
        st, _, body = self.post_sign("ec256", d)
        self.assertEqual(st, 200, body)
        self.verify_ec("ec256", d, body["signature"])
        signatures = [r for r in self.audit_lines() if r.get("request_id") == rid and r.get("sig.type") == "CKM_ECDSA"]
        self.assertEqual(len(signatures), 1)

    def test_restart_keeps_a_pending_request_and_approving_after_it_works(self):
        rid, d = self.held()
        self.daemon.restart()
        st, req = self.get(f"/v1/requests/{rid}")
        self.assertEqual((st, req["state"]), (200, "pending"))
        self.assertEqual(self.held(data=d)[0], rid)  # a retry after the restart finds it
        st, req = self.decide(rid, "approve", self.bob)
        self.assertEqual((st, req["state"]), (200, "signed"), req)
        st, req = self.get(f"/v1/requests/{rid}")
        self.verify_ec("ec256", d, req["signature"])

    def test_corrupted_state_file_does_not_stop_the_daemon(self):
        bad = self.st.state_dir / "policy-state" / "requests" / "r-00000000000000aa.json"
        bad.write_text("{ this is not json")
        self.daemon.restart()
        self.assertTrue(bad.with_name(bad.name + ".bad").exists())
        self.assertIn("r-00000000000000aa.json", self.daemon.log())
        self.held()

    def test_relic_pecoff_waits_in_request_until_approved(self):
        import test_relic_pecoff
        pe = test_relic_pecoff.tiny_pe(self.tmp, "x86_64")
        approved = {}
        t = threading.Thread(target=self.decide_when_listed, args=("held.exe", "approve", {}, approved))
        t.start()
        st, h, body, signed = relic_client.sign_pe(self.daemon, "rsa2048", pe, filename="held.exe")
        t.join(30)
        self.assertEqual(st, 200, body)
        self.assertEqual(approved["list"]["mechanism"], "pe-coff")
        self.assertEqual(approved["list"]["filesize"], len(pe))
        self.assertEqual(approved["result"][0], 200, approved["result"])
        path = self.tmp / "held-signed.exe"
        path.write_bytes(signed)
        test_relic_pecoff.osslsigncode_verify(path, self.st.keys["rsa2048"].certfile)
        # the same upload again: the stored signature, not a second one
        st, _, _, again = relic_client.sign_pe(self.daemon, "rsa2048", pe, filename="held.exe")
        self.assertEqual((st, again), (200, signed))
        sigs = [r for r in self.audit_lines() if r.get("request_id") == approved["id"] and r.get("sig.type") == "pe-coff"]
        self.assertEqual(len(sigs), 1)

    def test_relic_denied(self):
        import test_relic_pecoff
        pe = test_relic_pecoff.tiny_pe(self.tmp, "x86_64")
        t = threading.Thread(target=self.decide_when_listed,
                             args=("deny-me.exe", "deny", {"reason": "unsigned commit"}, {}))
        t.start()
        st, _, body, _ = relic_client.sign_pe(self.daemon, "rsa2048", pe, filename="deny-me.exe")
        t.join(30)
        self.assertEqual(st, 403, body)
        doc = json.loads(body)
        self.assertEqual(doc["title"], "Signing request denied")
        self.assertIn("unsigned commit", doc["detail"])


class PolicyConfig(unittest.TestCase):
    """Config errors name the rule; a policy that holds requests needs server.statedir."""

    def test_bad_policies_are_refused_at_start(self):
        tmp = harness.Path(harness.tempfile.mkdtemp(prefix="p11relay-policy-cfg-"))
        try:
            st = harness.make_state(tmp)
            for policy, needle in (({"approval": "required"}, "server.statedir"),
                                   ({"digests": ["sha3"]}, "unknown digest 'sha3'"),
                                   ({"windows": ["Mon-Fri 7-19"]}, "time window"),
                                   ({"mechanisms": ["CKM_NOPE"]}, "unknown mechanism"),
                                   ({"approval": "maybe"}, "'auto' or 'required'"),
                                   ({"quota": {"perweek": 1}}, "unknown key 'perweek'")):
                cfg = st.daemon_config()
                cfg["keys"]["ec256"]["policy"] = policy
                st.write_config(config=cfg)
                p = harness.run([harness.DAEMON, "--check-config", str(st.config)], check=False, env=st.env())
                self.assertNotEqual(p.returncode, 0, policy)
                self.assertIn(needle, p.stderr.decode(), policy)
        finally:
            harness.remove_tmp(tmp)


if __name__ == "__main__":
    harness.main()
