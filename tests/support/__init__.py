"""Test support: start real components (sshd, puppetserver) on loopback."""
