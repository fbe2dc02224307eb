package gate

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// signedOps makes n distinct ed25519-signed ops, so every Verify in a
// benchmark burns a fresh nonce.
func signedOps(b *testing.B, n int) (ssh.PublicKey, []Approval) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		b.Fatal(err)
	}
	out := make([]Approval, n)
	for i := range out {
		op := destroyOp(fmt.Sprintf("%032x", i))
		blob := mustCanon(b, op)
		sig, err := Sign(signer, blob, "")
		if err != nil {
			b.Fatal(err)
		}
		out[i] = Approval{Blob: blob, Signature: sig}
	}
	return signer.PublicKey(), out
}

// BenchmarkVerify compares the whole pipeline with the bare ed25519.Verify
// it is built around, over the same signed data.
func BenchmarkVerify(b *testing.B) {
	b.Run("bare-ed25519.Verify", func(b *testing.B) {
		pub, ops := signedOps(b, 1)
		env, err := ParseArmor(ops[0].Signature)
		if err != nil {
			b.Fatal(err)
		}
		var sig ssh.Signature
		if err := ssh.Unmarshal(env.Sig, &sig); err != nil {
			b.Fatal(err)
		}
		data, _ := SignedData(Namespace, "sha512", ops[0].Blob)
		raw := ed25519.PublicKey(pub.(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey))
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if !ed25519.Verify(raw, data, sig.Blob) {
				b.Fatal("bad signature")
			}
		}
	})
	b.Run("pipeline-memory-store", func(b *testing.B) {
		pub, ops := signedOps(b, b.N)
		v := newVerifier(b, NewMemoryNonceStore(), Signer{Key: pub, Role: RoleOperational})
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := v.Verify(ctx, ops[i].Signature, ops[i].Blob); err != nil {
				b.Fatal(err)
			}
		}
	})
	// interleaved runs both on each iteration so load from other processes
	// hits them alike, and reports the ratio as pipeline/bare.
	b.Run("interleaved-ratio", func(b *testing.B) {
		pub, ops := signedOps(b, b.N)
		v := newVerifier(b, NewMemoryNonceStore(), Signer{Key: pub, Role: RoleOperational})
		raw := pub.(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey)
		type bare struct{ data, sig []byte }
		bares := make([]bare, b.N)
		for i, a := range ops {
			env, err := ParseArmor(a.Signature)
			if err != nil {
				b.Fatal(err)
			}
			var sig ssh.Signature
			ssh.Unmarshal(env.Sig, &sig)
			data, _ := SignedData(Namespace, "sha512", a.Blob)
			bares[i] = bare{data, sig.Blob}
		}
		ctx := context.Background()
		var tBare, tPipe time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			start := time.Now()
			if !ed25519.Verify(raw, bares[i].data, bares[i].sig) {
				b.Fatal("bad signature")
			}
			mid := time.Now()
			if _, err := v.Verify(ctx, ops[i].Signature, ops[i].Blob); err != nil {
				b.Fatal(err)
			}
			tBare += mid.Sub(start)
			tPipe += time.Since(mid)
		}
		b.ReportMetric(float64(tBare.Nanoseconds())/float64(b.N), "bare-ns/op")
		b.ReportMetric(float64(tPipe.Nanoseconds())/float64(b.N), "pipeline-ns/op")
		b.ReportMetric(float64(tPipe)/float64(tBare), "pipeline/bare")
	})
	b.Run("pipeline-file-store", func(b *testing.B) {
		pub, ops := signedOps(b, b.N)
		store, err := OpenFileNonceStore(filepath.Join(b.TempDir(), "nonces.log"))
		if err != nil {
			b.Fatal(err)
		}
		defer store.Close()
		v := newVerifier(b, store, Signer{Key: pub, Role: RoleOperational})
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := v.Verify(ctx, ops[i].Signature, ops[i].Blob); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFileNonceStoreReopen1M opens a log of 1,000,000 entries with
// 32-character nonces (felhom-sign's default form).
func BenchmarkFileNonceStoreReopen1M(b *testing.B) {
	const entries = 1_000_000
	path := filepath.Join(b.TempDir(), "nonces.log")
	// Written by the store's own compaction: a million Use calls would
	// each wait for a sync.
	s, err := OpenFileNonceStore(path)
	if err != nil {
		b.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Unix()
	for i := range entries {
		s.used[fmt.Sprintf("%032x", i)] = exp
	}
	if _, err := s.Compact(time.Unix(exp, 0)); err != nil {
		b.Fatal(err)
	}
	s.Close()
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(fi.Size())
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s, err := OpenFileNonceStore(path)
		if err != nil {
			b.Fatal(err)
		}
		if s.Len() != entries {
			b.Fatalf("replayed %d entries", s.Len())
		}
		s.Close()
	}
}

// BenchmarkFileNonceStoreUse is append throughput with an fdatasync per
// nonce, on the file system of the test's temp directory.
func BenchmarkFileNonceStoreUse(b *testing.B) {
	s, err := OpenFileNonceStore(filepath.Join(b.TempDir(), "nonces.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	nonces := make([]string, b.N)
	for i := range nonces {
		nonces[i] = fmt.Sprintf("%032x", i)
	}
	exp := time.Now().Add(time.Hour)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Use(ctx, nonces[i], exp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCanonicalize(b *testing.B) {
	op := destroyOp("n")
	op.Params = map[string]any{"purge": true, "disks": []any{map[string]any{"name": "scsi0", "size": 32}}}
	for b.Loop() {
		if _, err := Canonicalize(op); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseOp(b *testing.B) {
	op := destroyOp("0123456789abcdef0123456789abcdef")
	blob := mustCanon(b, op)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseOp(blob); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifySignature(b *testing.B) {
	pub, ops := signedOps(b, 1)
	allowed, _ := NewAllowList([]Signer{{Key: pub, Role: RoleOperational}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := VerifySignature(ops[0].Signature, ops[0].Blob, allowed); err != nil {
			b.Fatal(err)
		}
	}
}
