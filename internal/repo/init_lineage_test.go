package repo

import (
	"context"
	"testing"
)

// repo init records generation 1 of the lineage record: on a new
// repository, and on one initialized before lineage records existed; a
// repository that has a generation keeps it.
func TestInitRecordsGeneration(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	// An older repository: initialized without a lineage record.
	if _, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "lz4"}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, store, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := r.Lineage(ctx); ok || err != nil {
		t.Fatalf("Init without Primary recorded a generation (%v, %v)", ok, err)
	}

	primary := &Generation{Instance: "pg-0", Site: "site-a", Timeline: 3, Reason: "ignored", TimelineStart: 42}
	res, err := Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "lz4", Primary: primary})
	if err != nil || res.Created || !res.LineageCreated || res.Lineage == nil {
		t.Fatalf("Init again with Primary: %+v, %v; want generation 1 recorded", res, err)
	}
	g, ok, err := r.Lineage(ctx)
	if err != nil || !ok {
		t.Fatalf("Lineage: %v, %v", ok, err)
	}
	if g.Number != 1 || g.Reason != "init" || g.Instance != "pg-0" || g.Site != "site-a" || g.Timeline != 3 ||
		g.TimelineStart != 0 || g.SystemID != testCluster.SystemID || *res.Lineage != g {
		t.Errorf("generation 1 = %+v (result %+v)", g, *res.Lineage)
	}

	res, err = Init(ctx, store, InitOptions{Cluster: testCluster, Compression: "lz4", Primary: &Generation{Instance: "pg-9", Timeline: 1}})
	if err != nil || res.LineageCreated || res.Lineage == nil || res.Lineage.Instance != "pg-0" {
		t.Fatalf("Init a third time: %+v, %v; want generation 1 of pg-0 kept", res, err)
	}

	fresh := newStore(t)
	res, err = Init(ctx, fresh, InitOptions{Cluster: testCluster, Compression: "lz4", Primary: &Generation{Instance: "db1", Timeline: 1}})
	if err != nil || !res.Created || !res.LineageCreated || res.Lineage.Number != 1 {
		t.Fatalf("Init of a new repository with Primary: %+v, %v", res, err)
	}
}
