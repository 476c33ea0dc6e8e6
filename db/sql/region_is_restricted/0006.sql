-- Whether the minors law applies to viewers in `region`.
-- As revision 0006 left it (0002's text, made SECURITY DEFINER by 0006; both predate db/sql/ and carry
-- their SQL inline): pg_get_functiondef() of a database migrated to 0006, so re-applying it changes nothing.
CREATE OR REPLACE FUNCTION public.region_is_restricted(region text)
 RETURNS boolean
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'public', 'pg_temp'
AS $function$
            SELECT coalesce(
                (SELECT minors_restricted FROM region_rules WHERE region_rules.region = upper(btrim($1))),
                (SELECT minors_restricted FROM region_rules WHERE region_rules.region = '*'),
                true)
        $function$;
REVOKE ALL ON FUNCTION public.region_is_restricted(region text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.region_is_restricted(region text) TO withsense_reader;
