//go:build faults

package faults

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/testenv"
)

// TestOtherStores runs the archive hooks' network trials against the other
// stores and against several repositories at once:
//
//   - GCS (fake-gcs-server) and Azure Blob (Azurite) behind the same faulty
//     front as MinIO in TestNetwork, for archive-push, archive-get,
//     backup-push and restore: each trial succeeds with exact data or
//     fails in time with its documented exit code and a message naming
//     the store.
//   - Two MinIO repositories, one of them behind the front: archive-push
//     needs both (a failure names the failing one, and the healthy one
//     holds nothing partial); archive-get, with the failing one listed
//     first, must fetch from the healthy one whatever the fault.
func TestOtherStores(t *testing.T) {
	s3 := needServices(t)
	t.Parallel() // beside TestLoad's ten minutes
	gcs, az := testenv.GCS(t), testenv.Azure(t)
	createAzureContainer(t, az)
	src, segs := walSource(t, len(netFaults)+2)
	for _, op := range []string{"archive-push", "archive-get", "backup-push", "restore"} {
		t.Run(op+"/gcs", func(t *testing.T) {
			t.Parallel()
			f := newFrontTo(t, "http://"+gcs.EmulatorHost)
			runSide(t, f, src, segs, gcsSide(t, gcs, f, op+" (gcs)"))
		})
		t.Run(op+"/azure", func(t *testing.T) {
			t.Parallel()
			f := newFrontTo(t, azureBlobEndpoint(t, az))
			runSide(t, f, src, segs, azureSide(t, az, f, op+" (azure)"))
		})
		if op == "backup-push" || op == "restore" {
			continue // one repository at a time: a backup goes to one
		}
		t.Run(op+"/several", func(t *testing.T) {
			t.Parallel()
			f := newFront(t, s3)
			runSide(t, f, src, segs, severalSide(t, s3, f, op+" (2 repos)"))
		})
	}
}

// runSide runs the trials of the operation side.op names.
func runSide(t *testing.T, f *front, src *pgtest.Cluster, segs []string, side storeSide) {
	switch op, _, _ := strings.Cut(side.op, " "); op {
	case "archive-push":
		netArchivePush(t, f, src, segs, side)
	case "archive-get":
		netArchiveGet(t, f, src, segs, side)
	case "backup-push":
		netBackupPush(t, f, side)
	case "restore":
		netRestore(t, f, side)
	default:
		t.Fatalf("no trials for operation %q", side.op)
	}
}

func gcsSide(t *testing.T, g testenv.GCSEnv, f *front, op string) storeSide {
	path := g.Bucket + "/faults/" + testenv.UniquePrefix(t)
	host := strings.TrimPrefix(f.Endpoint, "http://")
	return storeSide{
		op:       op,
		repoArgs: []string{"--repo", "gs://" + path + "?endpoint=" + f.Endpoint},
		direct:   []string{"gs://" + path + "?endpoint=http://" + g.EmulatorHost},
		names: func(stderr string) bool {
			return strings.Contains(stderr, g.Bucket) || strings.Contains(stderr, host)
		},
	}
}

func azureSide(t *testing.T, az testenv.AzureEnv, f *front, op string) storeSide {
	path := az.Container + "/faults/" + testenv.UniquePrefix(t)
	host := strings.TrimPrefix(f.Endpoint, "http://")
	account := azureAccount(t, az)
	return storeSide{
		op:       op,
		repoArgs: []string{"--repo", "azure://" + path + "?endpoint=" + f.Endpoint + "/" + account},
		direct:   []string{"azure://" + path + "?endpoint=" + azureBlobEndpoint(t, az) + "/" + account},
		names: func(stderr string) bool {
			return strings.Contains(stderr, az.Container) || strings.Contains(stderr, host)
		},
	}
}

// severalSide is two MinIO repositories: a healthy one and one behind f.
// archive-push lists the healthy one first (both must hold the segment);
// archive-get lists the failing one first (the healthy one must serve).
func severalSide(t *testing.T, s3 testenv.S3Env, f *front, op string) storeSide {
	healthy := s3URL(s3, testenv.UniquePrefix(t)+"-a", s3.Endpoint)
	prefix := testenv.UniquePrefix(t) + "-b"
	failing, failingDirect := s3URL(s3, prefix, f.Endpoint), s3URL(s3, prefix, s3.Endpoint)
	side := storeSide{
		op:     op,
		direct: []string{healthy, failingDirect},
		names:  func(stderr string) bool { return namesStore(stderr, s3, f.Endpoint) },
	}
	if strings.HasPrefix(op, "archive-push") {
		side.repoArgs = []string{"--repo", healthy, "--repo", failing}
	} else {
		side.repoArgs = []string{"--repo", failing, "--repo", healthy}
		side.oneHealthy = true
	}
	return side
}

// azureConnection is the test connection string's fields, by lower-case
// key.
func azureConnection(t *testing.T, az testenv.AzureEnv) map[string]string {
	kv := map[string]string{}
	for _, part := range strings.Split(az.ConnectionString, ";") {
		if k, v, ok := strings.Cut(part, "="); ok {
			kv[strings.ToLower(k)] = v
		}
	}
	if kv["blobendpoint"] == "" || kv["accountname"] == "" {
		t.Fatalf("the Azure test connection string has no BlobEndpoint or AccountName")
	}
	return kv
}

// azureBlobEndpoint is Azurite's scheme://host:port, without the account
// in the path.
func azureBlobEndpoint(t *testing.T, az testenv.AzureEnv) string {
	ep := strings.TrimSuffix(azureConnection(t, az)["blobendpoint"], "/")
	return strings.TrimSuffix(ep, "/"+azureAccount(t, az))
}

func azureAccount(t *testing.T, az testenv.AzureEnv) string {
	return azureConnection(t, az)["accountname"]
}

// createAzureContainer creates the test container (the service scripts
// create MinIO's and fake-gcs-server's buckets; Azurite starts empty).
func createAzureContainer(t *testing.T, az testenv.AzureEnv) {
	t.Helper()
	cc, err := container.NewClientFromConnectionString(az.ConnectionString, az.Container, nil)
	if err != nil {
		t.Fatalf("azure container client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cc.Create(ctx, nil); err != nil && !bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		t.Fatalf("create container %q: %v", az.Container, err)
	}
}
