-- Whether the minors law applies to viewers in `region` (the viewer's, as the caller received it).
-- The region is normalised by normalise_region(), the rule core/regions.py applies in Python. Then:
--   no region                       -> the default rule '*';
--   not a region code once normalised (control characters, other alphabets, '*', 'D', 'DE-') -> restricted,
--     whatever '*' says: a value nobody can read is never let through;
--   an ISO 3166-1 code (DE, DEU)    -> its own rule, else '*';
--   an ISO 3166-2 subdivision (US-CA) -> its own rule, else its country's (US), else '*'.
-- No rule at all (not even '*') -> restricted. SECURITY DEFINER: the reader role calls it without reading
-- region_rules.
CREATE OR REPLACE FUNCTION region_is_restricted(region text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT CASE
        WHEN viewer.code IS NULL THEN
            coalesce((SELECT minors_restricted FROM region_rules WHERE region_rules.region = '*'), true)
        WHEN viewer.code !~ '^([A-Z]{2,3}|[A-Z]{2}-[A-Z0-9]{1,3})$' THEN true
        ELSE coalesce(
            (SELECT minors_restricted FROM region_rules WHERE region_rules.region = viewer.code),
            (SELECT minors_restricted FROM region_rules
             WHERE viewer.code LIKE '__-%' AND region_rules.region = left(viewer.code, 2)),
            (SELECT minors_restricted FROM region_rules WHERE region_rules.region = '*'),
            true)
    END
    FROM (SELECT normalise_region(region) AS code) AS viewer
$$;
REVOKE ALL ON FUNCTION region_is_restricted(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION region_is_restricted(text) TO withsense_reader;
