// Package readmodel holds the example domain that ships with sightline:
// order events (streams "order-<id>") and the projections orders,
// customer_stats and daily_sales, readable as readmodel.orders,
// readmodel.customer_stats and readmodel.daily_sales whatever generation is
// active. Each applies a batch set-based: it folds the batch in memory and
// writes each changed row once, in one statement per table.
//
// It owns its projections' tables and nothing else; the projector decides
// which events reach Apply and in which transaction.
package readmodel
