package system

import (
	"crypto/rand"
	"encoding/hex"
)

// NewID returns 32 random hex characters.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error()) // cannot happen on Linux
	}
	return hex.EncodeToString(b[:])
}
