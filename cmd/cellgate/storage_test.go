package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/storage"
)

// TestRedactURISecrets: what the server logs as its database hides secrets wherever a MongoDB
// URI carries them, not only in the user information.
func TestRedactURISecrets(t *testing.T) {
	for _, uri := range []string{
		"mongodb://user:hunter2@db1,db2/?replicaSet=rs",
		"mongodb://db1/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:hunter2",
		"mongodb+srv://cluster.example.com/?tlsCertificateKeyFilePassword=hunter2",
		"mongodb://user:pass/hunter2@db1/", // an unescaped '/' in the password
	} {
		got := storage.RedactURI(uri)
		if strings.Contains(got, "hunter2") {
			t.Errorf("redactURI(%q) = %q leaks the secret", uri, got)
		}
		if !strings.HasPrefix(got, "mongodb") {
			t.Errorf("redactURI(%q) = %q", uri, got)
		}
	}
}

func TestQueueJournalBesideData(t *testing.T) {
	if got, want := queueJournalDir(options{dataDir: "/var/lib/cellgate"}), filepath.Join("/var/lib/cellgate", "permalink-queue"); got != want {
		t.Errorf("queueJournalDir = %q, want %q", got, want)
	}
}
