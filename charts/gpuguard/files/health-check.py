"""`helm test` for gpuguard: call each installed component's health endpoint from inside the cluster.

GPUGUARD_CHECKS is a JSON list of {"name", "url", "ca"?, "insecure"?}. An HTTPS check with "ca" verifies the server
certificate against that CA file and the URL's host name, exactly as kube-apiserver does when it calls the webhook
with its caBundle; "insecure" skips verification (kube-scheduler serves a self-signed certificate). Each check is
tried a few times, since pods may still be starting. Standard library only: it runs with any Python 3.
"""

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

ATTEMPTS = int(os.environ.get("GPUGUARD_CHECK_ATTEMPTS", "5"))
DELAY_SECONDS = float(os.environ.get("GPUGUARD_CHECK_DELAY", "3"))


def context(check):
    if not check["url"].startswith("https:"):
        return None
    if check.get("insecure"):  # kube-scheduler's own self-signed certificate: reachability only
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        return unverified
    return ssl.create_default_context(cafile=check["ca"])


def probe(check):
    """None when the endpoint answers 2xx, else what went wrong."""
    try:
        with urllib.request.urlopen(check["url"], timeout=5, context=context(check)) as response:
            response.read()
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLCertVerificationError):
            return f"TLS verification failed ({reason.verify_message}): the certificate does not match the CA or name"
        return f"unreachable ({reason})"
    return None


def run(check):
    problem = None
    for attempt in range(ATTEMPTS):
        problem = probe(check)
        if problem is None:
            return True
        if attempt + 1 < ATTEMPTS:
            time.sleep(DELAY_SECONDS)
    print(f"FAIL {check['name']}: {check['url']}: {problem}")
    if check.get("hint"):
        print(f"     {check['hint']}")
    return False


def main():
    checks = json.loads(os.environ["GPUGUARD_CHECKS"])
    results = [run(check) for check in checks]
    for check, ok in zip(checks, results):
        if ok:
            print(f"ok   {check['name']}: {check['url']}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
