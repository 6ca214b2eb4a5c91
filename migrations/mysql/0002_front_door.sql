-- A sale's front-door options (waiting room, ticket, proof-of-work, captcha,
-- one purchase in flight), as JSON text; NULL = every option off.
ALTER TABLE sales ADD COLUMN front_door TEXT NULL;
