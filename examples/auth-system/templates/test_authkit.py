"""Unit tests of authkit: password hashing and signed session tokens."""

import time
import unittest

from authkit.passwords import hash_password, verify_password
from authkit.tokens import TokenError, issue_token, read_token

SECRET = b"test-secret-not-for-production"


class PasswordTest(unittest.TestCase):
    def test_a_hash_verifies_its_password(self) -> None:
        stored = hash_password("correct horse battery staple")
        self.assertTrue(verify_password("correct horse battery staple", stored))

    def test_a_wrong_password_is_refused(self) -> None:
        stored = hash_password("s3cret")
        self.assertFalse(verify_password("guess", stored))

    def test_two_hashes_of_one_password_differ_by_salt(self) -> None:
        self.assertNotEqual(hash_password("same"), hash_password("same"))


class TokenTest(unittest.TestCase):
    def test_a_token_round_trips_its_subject(self) -> None:
        token = issue_token("user-42", SECRET, ttl_s=60)
        self.assertEqual(read_token(token, SECRET), "user-42")

    def test_a_tampered_token_is_refused(self) -> None:
        token = issue_token("user-42", SECRET, ttl_s=60)
        with self.assertRaises(TokenError):
            read_token(token[:-1] + ("A" if token[-1] != "A" else "B"), SECRET)

    def test_an_expired_token_is_refused(self) -> None:
        token = issue_token("user-42", SECRET, ttl_s=-1, now=time.time())
        with self.assertRaises(TokenError):
            read_token(token, SECRET)


if __name__ == "__main__":
    unittest.main()
