#!/usr/bin/python3
"""Sign rate through p11relay-pkcs11.so (mTLS to a local p11relayd in front of SoftHSMv2) against SoftHSMv2
loaded directly, same token, same run: one C_SignInit + C_Sign per signature (the baseline in docs/benchmarks.md).
Prints a table; asserts only that every signature succeeded. P11RELAY_BENCH_SECONDS sets the duration."""
import json
import os

from shim_util import SHIM, ShimTest, main, write_client_config

SECONDS = float(os.environ.get("P11RELAY_BENCH_SECONDS", "2"))


class BenchTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        write_client_config(cls.client_config, cls.st, [cls.daemon.url], pkcs11={"loglevel": "warning"})

    def bench(self, module, pin, key, mech, threads, env):
        p = self.driver(key, mech, "bench", threads, SECONDS, module=module, pin=pin, env=env, timeout=120)
        r = json.loads(p.stdout.decode().strip().splitlines()[-1])
        self.assertEqual(r["failed"], 0)
        return r

    def test_sign_rate_shim_vs_softhsm(self):
        softhsm_env = self.st.env()
        rows = []
        for key, mech in (("ec256", "ECDSA"), ("rsa2048", "RSA_PKCS")):
            for threads in (1, 4):
                direct = self.bench(self.st.module, self.st.user_pin, key, mech, threads, softhsm_env)
                shim = self.bench(SHIM, "x", key, mech, threads, self.env)
                rows.append((key, threads, direct, shim))
        print("\n%-8s %3s | %12s %9s | %12s %9s | %6s" % ("key", "thr", "softhsm op/s", "p50 ms", "shim op/s",
                                                         "p50 ms", "ratio"))
        for key, threads, d, s in rows:
            print("%-8s %3d | %12.0f %9.3f | %12.0f %9.3f | %6.2f" % (
                key, threads, d["ops_per_s"], d["p50_ms"], s["ops_per_s"], s["p50_ms"],
                s["ops_per_s"] / d["ops_per_s"] if d["ops_per_s"] else 0))


if __name__ == "__main__":
    main()
