package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/cluster"
	"github.com/cellgate/cellgate/gateway"
	"github.com/cellgate/cellgate/storage"
)

// orphanSweepEvery is how often abandoned uploads are looked for (also once at start-up).
const orphanSweepEvery = time.Hour

// storageStack is the database and what the gateway uses of it.
type storageStack struct {
	embedded *storage.Embedded
	store    *storage.Store
	queue    *storage.Queue
	where    string

	stopSweep context.CancelFunc
	swept     chan struct{} // closed when the sweeper has stopped
}

// queueJournalDir is where unwritten permalinks are kept across crashes and restarts: beside the
// embedded database under --data-dir, also when the database is an external MongoDB.
func queueJournalDir(o options) string {
	return filepath.Join(o.dataDir, "permalink-queue")
}

// openStorage connects to --mongo-uri, or starts the embedded database
// under --data-dir. onDropped is told about permalinks that could not be
// stored after all.
func openStorage(ctx context.Context, o options, log zerolog.Logger, onDropped func(id string, err error)) (*storageStack, error) {
	st := &storageStack{}
	uri := o.mongoURI
	if uri == "" {
		dir, err := filepath.Abs(filepath.Join(o.dataDir, "db"))
		if err != nil {
			return nil, err
		}
		st.embedded, err = storage.StartEmbedded(ctx, storage.EmbeddedConfig{Dir: dir, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("embedded database: %w", err)
		}
		uri = st.embedded.URI()
		st.where = "embedded FerretDB in " + dir
	} else {
		st.where = storage.RedactURI(uri)
	}
	var err error
	files := storage.DefaultFileLimits()
	files.MaxTotalBytes = o.maxStorageMB << 20
	cfg := storage.Config{URI: uri, Database: o.database, Logger: log, ConnectRetry: o.dbConnectRetry, Embedded: st.embedded, Files: files}
	if o.advertiseURL != "" {
		// The cluster registry's collections, created (and on the embedded database indexed for
		// lookups by _id) with storage's own.
		cfg.Collections = cluster.Collections()
	}
	st.store, err = storage.Open(ctx, cfg)
	if err != nil {
		st.close(context.Background())
		return nil, err
	}
	journalDir, err := filepath.Abs(queueJournalDir(o))
	if err != nil {
		st.close(context.Background())
		return nil, err
	}
	st.queue, err = storage.OpenQueue(context.Background(), st.store.Permalinks(), storage.QueueConfig{
		Logger: log, OnDropped: onDropped, JournalDir: journalDir,
	})
	if err != nil {
		st.close(context.Background())
		return nil, err
	}
	st.startSweeper(log, o.fileTTL)
	return st, nil
}

// startSweeper removes what uploads cut short by a crash left in GridFS, at start-up and then
// every orphanSweepEvery, and with a fileTTL the files older than it (every expirySweepEvery),
// until close.
func (st *storageStack) startSweeper(log zerolog.Logger, fileTTL time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	st.stopSweep, st.swept = cancel, make(chan struct{})
	files := st.store.Files()
	go func() {
		defer close(st.swept)
		orphans := time.NewTicker(orphanSweepEvery)
		defer orphans.Stop()
		expiry := time.NewTicker(expirySweepEvery)
		defer expiry.Stop()
		sweepOrphans := true
		for {
			if sweepOrphans {
				n, err := files.SweepOrphans(ctx)
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					log.Warn().Err(err).Int("swept", n).Msg("sweeping abandoned file uploads")
				case n > 0:
					log.Info().Int("swept", n).Msg("removed abandoned file uploads")
				}
				if _, stored, err := files.RefreshUsage(ctx); err == nil {
					log.Debug().Int64("bytes", stored).Msg("stored files counted")
				}
			}
			if fileTTL > 0 {
				expireFiles(ctx, files, fileTTL, log)
			}
			select {
			case <-ctx.Done():
				return
			case <-orphans.C:
				sweepOrphans = true
			case <-expiry.C:
				sweepOrphans = false
			}
		}
	}()
}

// expirySweepEvery is how often files past --file-ttl are removed.
const expirySweepEvery = 10 * time.Minute

// expireFiles removes the files older than ttl, batch after batch.
func expireFiles(ctx context.Context, files *storage.Files, ttl time.Duration, log zerolog.Logger) {
	cutoff := time.Now().Add(-ttl)
	total := 0
	for ctx.Err() == nil {
		n, err := files.DeleteExpired(ctx, cutoff)
		total += n
		if err != nil {
			log.Warn().Err(err).Int("removed", total).Msg("removing expired files")
			return
		}
		if n < 500 {
			break
		}
	}
	if total > 0 {
		log.Info().Int("removed", total).Dur("file_ttl", ttl).Msg("removed expired files")
	}
}

func (st *storageStack) gateway(o options) gateway.Storage {
	g := gateway.Storage{Permalinks: st.queue, Files: st.store.Files(), Ping: st.store.Ping, ResultBudget: o.resultKB << 10,
		UploadQuota: o.uploadQuota()}
	if o.storeResults {
		g.Results = st.store.Results()
	}
	return g
}

// uploadQuota is what --upload-mb-per-address-hour and --upload-files-per-address-hour say,
// their 0 (no cap) a negative cap.
func (o options) uploadQuota() storage.UploadQuotaConfig {
	q := storage.UploadQuotaConfig{BytesPerWindow: o.uploadMBPerAddr << 20, FilesPerWindow: o.uploadFilesPerAddr, Window: time.Hour}
	if q.BytesPerWindow == 0 {
		q.BytesPerWindow = -1
	}
	if q.FilesPerWindow == 0 {
		q.FilesPerWindow = -1
	}
	return q
}

// close writes what is queued (up to ctx; the rest stays in the journal) and disconnects.
func (st *storageStack) close(ctx context.Context) error {
	var errs []error
	if st.stopSweep != nil {
		st.stopSweep()
		<-st.swept
	}
	if st.queue != nil {
		errs = append(errs, st.queue.Close(ctx))
	}
	if st.store != nil {
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, st.store.Close(closeCtx))
		cancel()
	}
	if st.embedded != nil {
		errs = append(errs, st.embedded.Close())
	}
	return errors.Join(errs...)
}
