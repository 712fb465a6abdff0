-- Purchases through rails (issue "Real money rails", first step): each purchase records the rail it came through, the
-- store's transaction id (a store purchase credits once per store transaction, ever), the storefront country and the
-- version of the terms of sale it was made under; the price actually paid is price_minor and currency_code. Constant
-- defaults: no rewrite; purchases of the release before are the sandbox's, with an unknown storefront and terms.
ALTER TABLE purchases
    ADD COLUMN rail text NOT NULL DEFAULT 'sandbox',
    ADD COLUMN store_transaction_id text,
    ADD COLUMN storefront_country text NOT NULL DEFAULT '',
    ADD COLUMN terms_version text NOT NULL DEFAULT '';

CREATE UNIQUE INDEX purchases_store_transaction ON purchases (rail, store_transaction_id)
    WHERE store_transaction_id IS NOT NULL;
