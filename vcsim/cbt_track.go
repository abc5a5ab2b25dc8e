package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"sync"
)

// maxEpochs bounds how many changeIds a disk remembers; an older changeId is
// answered with a FileFault, as a real host answers one it has forgotten.
const maxEpochs = 64

// blockMap holds one hash per tracking block; 0 means "all zero bytes".
type blockMap []uint64

// extent is a byte range of a disk.
type extent struct{ start, length int64 }

// diskTrack is the CBT state of one disk: the UUID part of its changeIds, the
// sequence number of the last one, and the block hashes seen at each.
type diskTrack struct {
	uuid   string
	seq    int
	states map[string]blockMap
	order  []string
}

type trackKey struct {
	vm  string
	key int32
}

type snapKey struct {
	snap string
	key  int32
}

// tracker is the CBT state of the whole simulator. Its mutex guards only its
// own maps: the simulator's objects are guarded by the simulator's locks.
type tracker struct {
	mu    sync.Mutex
	disks map[trackKey]*diskTrack
	snaps map[snapKey]string // snapshot disk → the changeId recorded for it
}

func newTracker() *tracker {
	return &tracker{disks: map[trackKey]*diskTrack{}, snaps: map[snapKey]string{}}
}

// record stores the block hashes of a disk at a new snapshot and returns the
// changeId the disk now has.
func (t *tracker) record(vm, snap string, key int32, blocks blockMap) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := trackKey{vm, key}
	d := t.disks[k]
	if d == nil {
		d = &diskTrack{uuid: newCBTUUID(), states: map[string]blockMap{}}
		t.disks[k] = d
	}
	d.seq++
	id := fmt.Sprintf("%s/%d", d.uuid, d.seq)
	d.states[id] = blocks
	d.order = append(d.order, id)
	if len(d.order) > maxEpochs {
		delete(d.states, d.order[0])
		d.order = d.order[1:]
	}
	t.snaps[snapKey{snap, key}] = id
	return id
}

// reset forgets every disk of a VM: its next changeIds get a new UUID part.
func (t *tracker) reset(vm string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.disks {
		if k.vm == vm {
			delete(t.disks, k)
		}
	}
}

// snapshotState returns the changeId and block hashes recorded for a disk at a
// snapshot, if the disk's current tracking epoch still knows them.
func (t *tracker) snapshotState(vm, snap string, key int32) (string, blockMap, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	id, ok := t.snaps[snapKey{snap, key}]
	if !ok {
		return "", nil, false
	}
	b, ok := t.lookupLocked(vm, key, id)
	return id, b, ok
}

// lookup returns the block hashes recorded for a disk at changeId.
func (t *tracker) lookup(vm string, key int32, changeID string) (blockMap, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lookupLocked(vm, key, changeID)
}

func (t *tracker) lookupLocked(vm string, key int32, changeID string) (blockMap, bool) {
	d := t.disks[trackKey{vm, key}]
	if d == nil {
		return nil, false
	}
	b, ok := d.states[changeID]
	return b, ok
}

// newCBTUUID formats a random UUID the way ESXi writes the UUID part of a
// changeId: "52 xx xx xx xx xx xx xx-xx xx xx xx xx xx xx xx".
func newCBTUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[0] = 0x52
	var s bytes.Buffer
	for i, x := range b {
		switch {
		case i == 8:
			s.WriteByte('-')
		case i > 0:
			s.WriteByte(' ')
		}
		fmt.Fprintf(&s, "%02x", x)
	}
	return s.String()
}

var hashSeed = maphash.MakeSeed()

// hashFile hashes a disk's flat file in blocks of grain bytes over capacity
// bytes; bytes past the end of the file read as zeros (as a thin disk does).
// A missing file is an empty disk.
func hashFile(name string, capacity int64, grain int) (blockMap, error) {
	n := (capacity + int64(grain) - 1) / int64(grain)
	blocks := make(blockMap, n)
	f, err := os.Open(name)
	if os.IsNotExist(err) {
		return blocks, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()

	per := 1
	if grain < 1<<20 {
		per = (1 << 20) / grain
	}
	buf := make([]byte, per*grain)
	zero := make([]byte, grain)
	var h maphash.Hash
	h.SetSeed(hashSeed)
	for i := int64(0); i < n; i += int64(per) {
		got, err := f.ReadAt(buf, i*int64(grain))
		if err != nil && err != io.EOF {
			return nil, err
		}
		for j := 0; j < per && i+int64(j) < n; j++ {
			lo := j * grain
			if lo >= got {
				break // the rest is past the end of the file: zeros
			}
			hi := lo + grain
			if hi > got {
				hi = got
			}
			blk := buf[lo:hi]
			if bytes.Equal(blk, zero[:len(blk)]) {
				continue
			}
			h.Reset()
			_, _ = h.Write(blk)
			sum := h.Sum64()
			if sum == 0 {
				sum = 1 // 0 is reserved for zero blocks
			}
			blocks[i+int64(j)] = sum
		}
		if got < len(buf) {
			break
		}
	}
	return blocks, nil
}

// changedExtents lists the byte ranges of [start, end) whose blocks differ
// between base and cur, adjacent blocks merged. A nil base stands for an
// all-zero disk, so the answer is then the non-zero extents of cur.
func changedExtents(base, cur blockMap, grain int, start, end int64) []extent {
	at := func(m blockMap, i int64) uint64 {
		if i < int64(len(m)) {
			return m[i]
		}
		return 0
	}
	g := int64(grain)
	var out []extent
	for i := start / g; i*g < end; i++ {
		if at(base, i) == at(cur, i) {
			continue
		}
		lo, hi := i*g, (i+1)*g
		if lo < start {
			lo = start
		}
		if hi > end {
			hi = end
		}
		if k := len(out) - 1; k >= 0 && out[k].start+out[k].length == lo {
			out[k].length += hi - lo
		} else {
			out = append(out, extent{lo, hi - lo})
		}
	}
	return out
}
